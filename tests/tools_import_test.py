"""Every command-line tool imports beside every other: absl flags are one global registry."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_all_tools_import_in_one_process():
    code = (
        "import importlib, pkgutil, diffax.tools as t\n"
        "for m in pkgutil.iter_modules(t.__path__):\n"
        "    importlib.import_module('diffax.tools.' + m.name)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
