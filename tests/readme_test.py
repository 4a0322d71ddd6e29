"""The README's Quick start holds exactly two commands, and CI runs the test command verbatim."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quick_start_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_quick_start_has_the_main_job_and_the_test_command():
    commands = _quick_start_commands()
    assert len(commands) == 2, commands
    main, tests = commands
    assert "-m diffax.main --config=configs/digits.py --workdir=" in main
    assert "pytest" in tests and "tests" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert _quick_start_commands()[1] in ci.splitlines()
