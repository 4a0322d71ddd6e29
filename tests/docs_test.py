"""The commands in README.md and docs/*.md name configs, config fields and tools that exist.

Each line of a ```bash block that runs `python -m diffax.main` or `python -m diffax.tools.<name>`
is checked: the module file exists, `--config=configs/X.py[:arg]` exists, and every
`--config.a.b=v` override names a field of that config (its `get_config()`, loaded from the file
without absl flags). Nothing is trained; loading a config is cheap.
"""

import functools
import glob
import importlib.util
import os
import re
import shlex

import ml_collections
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_MAX_LINES = 220

# A fenced shell block, indented or not (blocks inside list items are indented).
_SHELL_BLOCK = re.compile(r"^[ \t]*```(?:bash|sh|shell)[ \t]*\n(.*?)^[ \t]*```", re.M | re.S)
# A markdown link or image target: [text](target) or ![alt](target).
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_DIFFAX_MODULE = re.compile(r"^diffax\.(main|tools\.\w+)$")
_OPERATORS = {"&&", "||", ";", "|", "&", ";;"}


def _markdown_files(root: str) -> list[str]:
    """Returns README.md and every docs/*.md under root, as absolute paths."""
    return [os.path.join(root, "README.md")] + sorted(glob.glob(os.path.join(root, "docs", "*.md")))


def shell_commands(text: str) -> list[tuple[int, str]]:
    """Returns (line number, command) for each command of the text's shell blocks.

    Lines ending in a backslash are joined with the next; the line number is the command's first.
    """
    commands = []
    for block in _SHELL_BLOCK.finditer(text):
        first_line = text.count("\n", 0, block.start(1)) + 1
        pending, start = "", None
        for offset, line in enumerate(block.group(1).splitlines()):
            if start is None:
                start = first_line + offset
            stripped = line.strip()
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            command = (pending + stripped).strip()
            if command:
                commands.append((start, command))
            pending, start = "", None
        if pending.strip():
            commands.append((start, pending.strip()))
    return commands


def diffax_invocations(command: str) -> list[tuple[str, list[str]]]:
    """Returns (module, arguments) for each `-m diffax.main` / `-m diffax.tools.X` in a command."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)  # `&&`, `|`, `;` come out as words of their own; `#` starts a comment.
    invocations = []
    for i, word in enumerate(words[:-1]):
        if word == "-m" and _DIFFAX_MODULE.match(words[i + 1]):
            args = []
            for arg in words[i + 2 :]:
                if arg in _OPERATORS:
                    break
                args.append(arg)
            invocations.append((words[i + 1], args))
    return invocations


@functools.cache
def load_config(root: str, spec: str) -> ml_collections.ConfigDict:
    """Returns the config of `configs/X.py` or `configs/X.py:arg` under root, by its get_config."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(
        "docs_test_config_" + re.sub(r"\W", "_", path), os.path.join(root, path)
    )
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def has_field(config: ml_collections.ConfigDict, dotted: str) -> bool:
    """Returns whether the dotted path (`training.batch_size`) names a field of the config."""
    node = config
    for name in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            return False
        node = node[name]
    return True


def problems(root: str, command: str) -> list[str]:
    """Returns one sentence per thing a command names that does not exist under root."""
    found = []
    for module, args in diffax_invocations(command):
        module_file = os.path.join(root, *module.split(".")) + ".py"
        if not os.path.isfile(module_file):
            found.append(f"{module}: no file {os.path.relpath(module_file, root)}")
        config_spec = None
        overrides = []
        for arg in args:
            if arg.startswith("--config="):
                config_spec = arg.split("=", 1)[1]
            elif arg.startswith("--config."):
                overrides.append(arg[len("--config.") :].split("=", 1)[0])
        if config_spec is None:
            if overrides:
                found.append(f"{module}: --config.{overrides[0]} without --config=FILE")
            continue
        if not os.path.isfile(os.path.join(root, config_spec.partition(":")[0])):
            found.append(f"{module}: no config file {config_spec}")
            continue
        config = load_config(root, config_spec)
        for field in overrides:
            if not has_field(config, field):
                found.append(f"{module}: {config_spec} has no field {field}")
    return found


def _documented_commands(root: str) -> list[tuple[str, str]]:
    """Returns (file:line, command) for each diffax command in README.md and docs/*.md."""
    commands = []
    for path in _markdown_files(root):
        with open(path) as f:
            text = f.read()
        for line, command in shell_commands(text):
            if diffax_invocations(command):
                commands.append((f"{os.path.relpath(path, root)}:{line}", command))
    return commands


_COMMANDS = _documented_commands(ROOT)


def test_the_docs_hold_diffax_commands():
    files = {where.split(":")[0] for where, _ in _COMMANDS}
    assert "README.md" in files, files
    assert len(files) >= 5 and len(_COMMANDS) >= 20, _COMMANDS


@pytest.mark.parametrize("where,command", _COMMANDS, ids=[where for where, _ in _COMMANDS])
def test_command_names_existing_configs_fields_and_tools(where, command):
    assert problems(ROOT, command) == [], f"{where}: {command}"


def test_checker_finds_a_missing_field_config_and_tool():
    text = (
        "```bash\n"
        "python -m diffax.main --config=configs/digits.py --workdir=w \\\n"
        "  --config.training.batchsize=64 --config.eval.sampler=ddim\n"
        "python -m diffax.main --config=configs/no_such_config.py --workdir=w\n"
        "python -m diffax.tools.no_such_tool --config=configs/digits.py\n"
        "```\n"
    )
    (_, bad_field), (_, bad_config), (_, bad_tool) = shell_commands(text)
    assert problems(ROOT, bad_field) == [
        "diffax.main: configs/digits.py has no field training.batchsize"
    ]
    assert problems(ROOT, bad_config) == ["diffax.main: no config file configs/no_such_config.py"]
    assert problems(ROOT, bad_tool) == [
        "diffax.tools.no_such_tool: no file diffax/tools/no_such_tool.py"
    ]


def test_readme_is_a_first_read():
    with open(os.path.join(ROOT, "README.md")) as f:
        lines = f.read().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


@pytest.mark.parametrize("path", _markdown_files(ROOT), ids=os.path.basename)
def test_relative_links_resolve(path):
    with open(path) as f:
        targets = _LINK.findall(f.read())
    missing = [
        target
        for target in targets
        if "://" not in target
        and not target.startswith(("#", "mailto:"))
        and not os.path.exists(os.path.join(os.path.dirname(path), target.split("#")[0]))
    ]
    assert missing == [], f"{os.path.relpath(path, ROOT)} links to missing files: {missing}"
