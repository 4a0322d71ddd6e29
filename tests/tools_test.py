"""Every command-line tool (diffax.tools.run): `--help` prints its usage and exits 0; wrong input
is one sentence `<tool>: error: ...` and exit 1, no traceback. One subprocess per case."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MISSING = "/nonexistent/diffax-test"

# (tool, a flag its --help must list, wrong arguments, words the sentence must hold).
TOOLS = [
    ("score_images", "--images", [f"--images={MISSING}/x.npz"], [f"{MISSING}/x.npz"]),
    ("score_images", "--images", [], ["--images is required"]),
    (
        "score_images",
        "--images",
        ["--imagez=x.npz"],
        ["--imagez is not a flag of diffax.tools.score_images"],
    ),
    (
        "sampler_table",
        "--workdir",
        ["--config=configs/tiny.py", "--workdir={empty}"],
        ["No checkpoint in {empty}"],
    ),
    (
        "embed_captions",
        "--out",
        ["--config=configs/tiny.py", "--out={empty}/{{split}}.npz"],
        ["--config must be a text config"],
    ),
    (
        "convert_inception",
        "--graph_def",
        [f"--graph_def={MISSING}/g.pb", "--out={empty}/i.npz"],
        [f"{MISSING}/g.pb", "No such file"],
    ),
    (
        "convert_lpips",
        "--vgg16",
        [f"--vgg16={MISSING}/v.pth", f"--lin={MISSING}/l.pth", "--out={empty}/l.npz"],
        [f"{MISSING}/v.pth", "No such file"],
    ),
    ("benchmark", "--steps", ["--config=configs/nope.py"], ["--config=configs/nope.py"]),
    ("make_vae_fixture", "--output_dir", None, None),  # Writes a fixture: no input to get wrong.
    ("make_openai_fixture", "--guided_diffusion", None, None),
    (
        "import_checkpoint",
        "--checkpoint",
        [
            "--source=guided-diffusion",
            f"--checkpoint={MISSING}/x.pt",
            "--config=configs/published/adm_imagenet256_cond.py",
            "--workdir={empty}/w",
        ],
        [f"{MISSING}/x.pt", "No such file"],
    ),
    # A library of FLOP counts, not a command: --help and any run say where its figures are.
    ("flops", "diffax.tools.benchmark", [], ["is a library", "diffax.tools.benchmark"]),
]


def _run(tool: str, args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, "-m", f"diffax.tools.{tool}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("tool, flag", sorted({(t[0], t[1]) for t in TOOLS}))
def test_help_prints_the_usage_and_exits_0(tool, flag):
    done = _run(tool, ["--help"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert flag in done.stdout and f"diffax.tools.{tool}" in done.stdout


@pytest.mark.parametrize(
    "tool, args, words",
    [(t[0], t[2], t[3]) for t in TOOLS if t[2] is not None],
    ids=[f"{t[0]}-{i}" for i, t in enumerate(TOOLS) if t[2] is not None],
)
def test_wrong_input_is_one_sentence_and_exit_1(tmp_path, tool, args, words):
    empty = str(tmp_path)
    done = _run(tool, [a.format(empty=empty) for a in args])
    assert done.returncode == 1, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"{tool}: error: "), done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    for word in words:
        assert word.format(empty=empty) in lines[-1], (word, lines[-1])
