"""One sentence for each way a command line can be wrong: a flag, a config field, a config file."""

import re

from absl import flags

from diffax import config_checks

_CONFIG_FILE_HELP = "give a config file such as configs/digits.py"


def _flag_argument(argv: list[str], name: str) -> str | None:
    """Returns the last argument of argv that sets --name (as typed; it wins), or None."""
    for argument in reversed(argv[1:]):
        if argument == f"--{name}" or argument.startswith(f"--{name}="):
            return argument
    return None


def _config_path(argv: list[str]) -> str:
    argument = _flag_argument(argv, "config")
    return argument.split("=", 1)[1] if argument and "=" in argument else "?"


def _unknown_field(error: Exception, argv: list[str]) -> str | None:
    """Returns the sentence for a --config.a.b override naming a field that does not exist."""
    text = str(error).replace("\\n", "\n").replace("\\'", "'")
    found = re.search(r"'([A-Za-z_][A-Za-z0-9_]*)'", text)
    if not found:
        return None
    key = found.group(1)
    override = next(
        (a for a in argv[1:] if a.startswith("--config.") and f".{key}" in a.split("=", 1)[0]),
        None,
    )
    if override is None:
        return None
    path = override.split("=", 1)[0][len("--config.") :]
    section = path.rsplit(".", 1)[0] if "." in path else ""
    where = f"config.{section}" if section else "the config"
    if section == "model" and key in config_checks.MOVED_MODEL_FIELDS:
        new = config_checks.moved_field(key)
        others = [
            f"model.{config_checks.moved_field(key, kind)} for a {label}"
            for kind, label in (("noisy_classifier", "noisy classifier"), ("dit", "DiT"))
            if config_checks.moved_field(key, kind) != new
        ]
        also = f" ({', '.join(others)})" if others else ""
        return f"{override}: config.model is split by part now; set --config.model.{new}{also}."
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    hint = (
        f"did you mean {suggestion.group(1)!r}?"
        if suggestion
        else ("configs/default.py lists every field.")
    )
    return f"{override}: {where} has no field {key!r}; {hint}"


def _bad_value(message: str) -> str:
    """Returns the sentence for a flag whose value has the wrong type or is not allowed."""
    found = re.match(r"flag (--[^=\s]+)=(.*?): (.*)", message, flags=re.S)
    if not found:
        return message
    flag, value, reason = found.groups()
    if "int()" in reason:
        accepted = "an integer"
    elif "float" in reason or "could not convert" in reason:
        accepted = "a number"
    elif "should be one of" in reason:
        accepted = reason.replace("value should be", "")
    elif "bool" in reason.lower():
        accepted = "true or false"
    else:
        return f"{flag}={value}: {reason}"
    return f"{flag}={value} is not valid: expected {accepted.strip()}."


def describe(error: Exception, argv: list[str], program: str = "diffax.main") -> str:
    """Returns one sentence for an error raised while parsing argv, naming the flag or field."""
    if isinstance(error, SyntaxError):
        line = f" (line {error.lineno})" if error.lineno else ""
        return f"--config={_config_path(argv)} does not parse: {error.msg}{line}."
    if isinstance(error, (AttributeError, KeyError)):
        sentence = _unknown_field(error, argv)
        if sentence:
            return sentence
    message = " ".join(str(error).split())
    if isinstance(error, flags.UnrecognizedFlagError):
        name = re.search(r"flag '([^']+)'", message)
        guess = re.search(r"Did you mean: ([\w, ]+?) ?\?", message)
        hint = f" (did you mean --{guess.group(1).split(',')[0].strip()}?)" if guess else ""
        flag = f"--{name.group(1)}" if name else "A flag"
        return f"{flag} is not a flag of {program}{hint}; --helpshort lists them."
    if "--config is required" in message or "Flag --config must have a value" in message:
        return f"--config is required: {_CONFIG_FILE_HELP}."
    if "--workdir is required" in message or "Flag --workdir must have a value" in message:
        return "--workdir is required: the folder for checkpoints, logs and samples."
    if "No such file or directory" in message or "Failed loading config file" in message:
        path = _config_path(argv)
        return f"--config={path} cannot be loaded: no such file ({_CONFIG_FILE_HELP})."
    if isinstance(error, flags.Error):
        return _bad_value(message)
    return f"--config={_config_path(argv)} failed to load: {type(error).__name__}: {message}"
