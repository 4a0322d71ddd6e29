"""Command-line tools (absl flags), not on the training path.

Each tool ends with `tools.run(main, required=[...])`, which gives them one command-line style:
`--help` prints the tool's usage (its docstring and flags) and exits 0; a wrong flag, a missing
required flag or wrong input (a missing file, a workdir without a checkpoint) is one sentence,
`<tool>: error: ...`, and exit status 1, with no traceback.
"""

import errno
import os
import sys
from collections.abc import Callable, Sequence

from absl import app, flags

from diffax import flag_errors

# Errors that mean "wrong input": one sentence and exit 1 (as `diffax.main`).
INPUT_ERRORS = (ValueError, OSError, FloatingPointError, app.UsageError)
_HELP = ("--help", "-h", "-?", "--helpshort", "--helpfull")


def _program() -> str:
    """Returns the running tool's name (score_images for `python -m diffax.tools.score_images`)."""
    return os.path.splitext(os.path.basename(sys.argv[0]))[0]


def _sentence(error: BaseException) -> str:
    """Returns an error as one sentence; an OSError as 'PATH: reason.'."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.filename}: {error.strerror}."
    return " ".join(str(error).split())


def fail(message: str) -> None:
    """Prints `<tool>: error: message` on stderr and exits 1."""
    print(f"{_program()}: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(1)


def run(main: Callable[[list[str]], None], required: Sequence[str] = ()) -> None:
    """app.run(main) with `--help` exiting 0 and wrong input (bad flags, the `required` flags
    unset, INPUT_ERRORS raised by main) stopping with one sentence and exit 1."""

    def parse(argv: list[str]) -> list[str]:
        if any(argument in _HELP for argument in argv[1:]):
            app.usage(shorthelp="--helpfull" not in argv, writeto_stdout=True, exitcode=0)
        try:
            remaining = flags.FLAGS(argv)
            for name in required:
                value = flags.FLAGS[name].value
                if value is None or value == "" or value == []:
                    raise flags.IllegalFlagValueError(f"--{name} is required (see --help)")
                getattr(value, "keys", None)  # A config file loads lazily: fail here, if it fails.
            return remaining
        except Exception as error:  # noqa: BLE001 (any parse failure is the user's input)
            fail(flag_errors.describe(error, argv, f"diffax.tools.{_program()}"))
        return []

    def guarded(argv: list[str]) -> None:
        try:
            main(argv)
        except ModuleNotFoundError as error:  # An optional dependency of this tool only.
            fail(f"{_program()} needs the Python package {error.name!r}: pip install it.")
        except INPUT_ERRORS as error:
            fail(_sentence(error))

    app.run(guarded, flags_parser=parse)


def require_files(*paths: str) -> None:
    """Raises FileNotFoundError ('PATH: No such file or directory.') for the first missing file."""
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
