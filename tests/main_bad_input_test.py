"""Every wrong input a user can type gets one sentence: a table of real `diffax.main` runs.

Each case asserts exit status 1, that stderr's last line is one `diffax: error:` sentence naming
the field, flag or path, that no traceback reaches the console, and that no existing file of the
workdir (checkpoints, eval files, samples; the logs aside) was changed or deleted.
"""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import SMALL_UNET
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(devices: int = 1) -> dict:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _run(args, devices: int = 1, config: str | None = "configs/tiny.py"):
    command = [sys.executable, "-m", "diffax.main"]
    if config:
        command.append(f"--config={config}")
    return subprocess.run(
        command + list(args),
        cwd=ROOT,
        env=_env(devices),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _snapshot(folder: str) -> dict[str, str]:
    """Returns {relative path: sha256} of every file under folder except the logs."""
    hashes = {}
    for root, _, files in os.walk(folder):
        for name in files:
            if name.startswith("diffax.") or ".INFO" in name or ".WARNING" in name:
                continue  # absl log files and their links: new ones are expected.
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                hashes[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return hashes


def _assert_one_sentence(done, *names):
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("diffax: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    for name in names:
        assert name in errors[0], (name, errors[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """One tiny run (SMALL_UNET: every run on it passes the same) trained for 2 steps, shared by
    the cases that need a checkpoint."""
    workdir = str(tmp_path_factory.mktemp("trained"))
    done = _run(
        [
            *SMALL_UNET,
            f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}",
            "--config.training.num_steps=2",
            "--config.eval.num_bpd_examples=8",
            "--config.eval.quality_metrics=False",
        ]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


# (case id, extra arguments, names the sentence must contain). Each runs on a new workdir.
CONFIG_CASES = [
    ("misspelled-field", ["--config.training.batchsize=8"], ["batchsize", "batch_size"]),
    ("wrong-type", ["--config.training.batch_size=abc"], ["training.batch_size", "integer"]),
    ("zero-batch", ["--config.training.batch_size=0"], ["training.batch_size"]),
    ("negative-rate", ["--config.training.learning_rate=-1e-3"], ["training.learning_rate"]),
    ("zero-steps", ["--config.training.num_steps=0"], ["training.num_steps"]),
    ("zero-timesteps", ["--config.diffusion.num_timesteps=0"], ["diffusion.num_timesteps"]),
    ("schedule", ["--config.diffusion.schedule=sigmoid"], ["diffusion.schedule", "cosine"]),
    ("mean", ["--config.diffusion.mean_type=score"], ["diffusion.mean_type", "eps"]),
    ("var", ["--config.diffusion.var_type=fixed_tiny"], ["diffusion.var_type"]),
    ("loss", ["--config.diffusion.loss_type=l1"], ["diffusion.loss_type", "hybrid"]),
    ("sampler", ["--config.eval.sampler=rk45"], ["eval.sampler", "dpmpp_2m"]),
    (
        "solver-order",
        ["--config.eval.sampler=dpmpp_3m", "--config.eval.solver_order=4"],
        ["eval.solver_order"],
    ),
    ("hybrid-fixed", ["--config.diffusion.var_type=fixed_large"], ["diffusion.loss_type"]),
    ("image-size", ["--config.data.image_size=9"], ["data.image_size"]),
    (
        "attention",
        ["--config.model.unet.attention_resolutions=(3,)"],
        ["model.unet.attention_resolutions"],
    ),
    ("ema-rate", ["--config.training.ema_rates=(1.5,)"], ["training.ema_rates"]),
    ("model-name", ["--config.model.name=transformer"], ["model.name", "unet"]),
    (
        "guidance-unconditional",
        ["--config.model.class_cond=False", "--config.eval.guidance_scale=2.0"],
        ["eval.guidance_scale"],
    ),
    (
        "sample-spacing",
        ["--config.eval.sampler=unipc", "--config.eval.sample_spacing=cubic"],
        ["eval.sample_spacing"],
    ),
    (
        "classifier-without-workdir",
        ["--config.eval.classifier_scale=2.0"],
        ["eval.classifier_workdir"],
    ),
    (
        "classifier-workdir-empty",
        [
            "--config.eval.classifier_scale=2.0",
            "--config.eval.classifier_workdir=/nonexistent/classifier",
            "--mode=sample",
        ],
        ["eval.classifier_workdir"],
    ),
    ("chain-frames", ["--config.eval.chain_frames=-1"], ["eval.chain_frames"]),
    (
        "dit-patch",
        ["--config.model.name=dit", "--config.model.dit.patch_size=3"],
        ["model.dit.patch_size"],
    ),
    (
        "dit-heads",
        ["--config.model.name=dit", "--config.model.dit.num_heads=5"],
        ["model.dit.hidden_size", "model.dit.num_heads"],
    ),
    ("old-model-field", ["--config.model.ch=64"], ["--config.model.ch=64", "model.unet.ch"]),
    ("mode", ["--mode=fit"], ["--mode", "train"]),
    ("unknown-flag", ["--num_steps=5"], ["--num_steps"]),
    ("num-samples-zero", ["--mode=sample", "--num_samples=0"], ["--num_samples"]),
    ("num-samples-negative", ["--mode=sample", "--num_samples=-3"], ["--num_samples"]),
    ("no-checkpoint", ["--mode=eval"], ["No checkpoint"]),
    ("prompt-without-text", ["--mode=sample", "--prompt=a three"], ["--prompt", "text_cond"]),
    ("text-length-short", ["--config.data.text_length=8"], ["data.text_length"]),
    # Issue 26: each used to pass and fail late (a traceback, or after training and saving).
    ("seed-overflow", ["--config.seed=99999999999999999999"], ["config.seed", "2**32"]),
    ("digits-rgb", ["--config.data.num_channels=3"], ["data.num_channels=3", "grayscale"]),
    (
        "image-folder-split",
        ["--config.data.dataset=image_folder", "--config.data.folder=/nonexistent/faces"],
        ["data.eval_split='test'", "'train'"],
    ),
    (
        "num-samples-memory",
        ["--mode=sample", "--num_samples=1000000000"],
        ["--num_samples=1000000000", "use at most --num_samples="],
    ),
]


def test_prompt_outside_sample_mode_or_too_long_for_the_text_model(tmp_path):
    text = "configs/tiny_text.py"
    done = _run([f"--workdir={tmp_path}", "--prompt=a three"], config=text)
    _assert_one_sentence(done, "--prompt", "--mode=sample")
    done = _run([f"--workdir={tmp_path}", "--mode=sample", "--prompt=" + "x" * 40], config=text)
    _assert_one_sentence(done, "data.text_length=32")
    # Bytes that are not UTF-8 (Python reads them from argv as surrogates), shown escaped.
    done = _run(
        [f"--workdir={tmp_path}", "--mode=sample", "--prompt=\udcff\udcfe three"], config=text
    )
    _assert_one_sentence(done, "--prompt='\\xff\\xfe three' is not valid UTF-8")


@pytest.mark.parametrize(
    ("args", "names"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES]
)
def test_bad_config_or_flag_gets_one_sentence_and_creates_nothing(tmp_path, data_dir, args, names):
    workdir = tmp_path / "nope" / "a" / "b"
    done = _run([f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *args])
    _assert_one_sentence(done, *names)
    assert not (tmp_path / "nope").exists()  # Checked before the workdir is created.


def test_config_without_a_data_set_creates_no_workdir(tmp_path):
    done = _run([f"--workdir={tmp_path / 'nope' / 'a' / 'b'}"], config="configs/default.py")
    _assert_one_sentence(done, "data.dataset")
    assert not (tmp_path / "nope").exists()


def test_batch_that_does_not_split_over_the_devices(tmp_path):
    done = _run([f"--workdir={tmp_path}", "--config.training.batch_size=12"], devices=8)
    _assert_one_sentence(done, "training.batch_size=12", "8 devices")


def test_sample_mode_on_a_classifier_config(tmp_path):
    done = _run([f"--workdir={tmp_path}", "--mode=sample"], config="configs/digits_classifier.py")
    _assert_one_sentence(done, "classifier", "--mode=sample")


def test_help_prints_the_usage_and_exits_0():
    done = _run(["--help"], config=None)
    assert done.returncode == 0 and "--workdir" in done.stdout and "--verbose" in done.stdout


def test_missing_config_or_workdir(tmp_path):
    _assert_one_sentence(_run([], config="configs/tiny.py"), "--workdir")
    _assert_one_sentence(_run([f"--workdir={tmp_path}"], config=None), "--config")


def test_config_file_that_does_not_exist_or_does_not_parse(tmp_path):
    missing = _run([f"--workdir={tmp_path}"], config="configs/tiny_typo.py")
    _assert_one_sentence(missing, "configs/tiny_typo.py")
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n    pass\n")
    _assert_one_sentence(_run([f"--workdir={tmp_path}"], config=str(broken)), str(broken), "parse")


def test_workdir_that_is_a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("keep me")
    _assert_one_sentence(_run([f"--workdir={path}"]), str(path), "file")
    assert path.read_text() == "keep me"


def test_read_only_workdir_loses_nothing(tmp_path, trained):
    mount = tmp_path / "ro"
    mount.mkdir()
    copy = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)])
    if copy.returncode != 0:
        pytest.skip("mounting a tmpfs (to make a read-only folder as root) is not permitted here")
    try:
        subprocess.run(["cp", "-a", f"{trained}/.", str(mount)], check=True)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        before = _snapshot(str(mount))
        for mode in ("train", "eval"):
            done = _run([*SMALL_UNET, f"--workdir={mount}", f"--mode={mode}"])
            _assert_one_sentence(done, str(mount))
        assert _snapshot(str(mount)) == before
    finally:
        subprocess.run(["umount", str(mount)])


def test_checkpoint_of_another_model_width_is_refused_and_kept(trained, data_dir):
    before = _snapshot(trained)
    other = ["--config.model.unet.ch=64", "--config.model.unet.num_head_channels=64"]
    for mode, names in (
        ("train", ["does not fit this config", "params/"]),  # Resuming compares the shapes.
        ("eval", ["model.unet.ch=64 (saved: 32)", "--allow_config_change"]),  # The config.
    ):
        done = _run(
            [
                *SMALL_UNET,
                f"--workdir={trained}",
                f"--config.data.data_dir={data_dir}",
                *other,
                f"--mode={mode}",
            ]
        )
        _assert_one_sentence(done, *names)
    assert _snapshot(trained) == before


def test_sample_refuses_a_process_other_than_the_checkpoints_unless_allowed(trained, data_dir):
    """Same shapes, other meaning: x0 prediction on a linear schedule for an eps, cosine model."""
    before = _snapshot(trained)
    other = ["--config.diffusion.mean_type=x0", "--config.diffusion.schedule=linear"]
    args = [
        *SMALL_UNET,
        f"--workdir={trained}",
        f"--config.data.data_dir={data_dir}",
        "--mode=sample",
    ]
    done = _run([*args, *other, "--num_samples=2"])
    _assert_one_sentence(
        done, "diffusion.mean_type='x0' (saved: 'eps')", "diffusion.schedule='linear'"
    )
    assert _snapshot(trained) == before
    # Eval-only fields differ freely; --allow_config_change runs the changed process on purpose.
    done = _run(
        [*args, "--config.eval.sampler=ddim", "--config.eval.sample_steps=3", "--num_samples=2"]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    done = _run([*args, *other, "--allow_config_change", "--num_samples=2"])
    assert done.returncode == 0, done.stderr[-3000:]


def test_num_samples_zero_on_a_trained_run_writes_nothing(trained):
    before = _snapshot(trained)
    _assert_one_sentence(
        _run([*SMALL_UNET, f"--workdir={trained}", "--mode=sample", "--num_samples=0"])
    )
    assert _snapshot(trained) == before


def _png(path, array):
    Image.fromarray(array).save(path)


def _folder_case(tmp_path, kind: str) -> str:
    """Writes an image folder of the given defect; returns its path."""
    folder = tmp_path / kind
    folder.mkdir()
    good = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    if kind == "empty":
        return str(folder)
    if kind == "text-only":
        (folder / "notes.txt").write_text("not an image")
    elif kind == "corrupt":
        _png(folder / "a.png", good)
        (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    elif kind == "16-bit":
        _png(folder / "a.png", good.astype(np.uint16) * 257)  # PIL mode I;16
    elif kind == "mixed-sizes":
        _png(folder / "a.png", good)
        _png(folder / "b.png", np.zeros((12, 12), np.uint8))
    return str(folder)


FOLDER_CASES = [
    ("missing", [], ["data.folder", "missing"]),
    ("empty", [], ["empty", "no images"]),
    ("text-only", [], ["text-only", "no images"]),
    ("corrupt", [], ["b.png"]),
    ("16-bit", [], ["a.png", "16-bit"]),
    ("mixed-sizes", ["--config.data.resize_images=False"], ["b.png", "12x12"]),
]


@pytest.mark.parametrize(("kind", "args", "names"), FOLDER_CASES, ids=[c[0] for c in FOLDER_CASES])
def test_bad_image_folder_gets_one_sentence(tmp_path, kind, args, names):
    folder = str(tmp_path / "missing") if kind == "missing" else _folder_case(tmp_path, kind)
    done = _run(
        [
            f"--workdir={tmp_path / 'run'}",
            "--config.data.dataset=image_folder",
            f"--config.data.folder={folder}",
            "--config.data.num_levels=256",
            "--config.data.eval_split=train",  # A folder's one split.
            "--config.data.num_classes=0",
            "--config.model.class_cond=False",
            "--config.eval.guidance_scale=0",
            *args,
        ]
    )
    _assert_one_sentence(done, *[n.replace("missing", folder) for n in names])
    if kind in ("missing", "empty", "text-only"):  # Known from the file names: before any write.
        assert not os.path.exists(tmp_path / "run")


def test_tfds_dataset_not_prepared(tmp_path):
    done = _run(
        [
            f"--workdir={tmp_path / 'run'}",
            "--config.data.dataset=mnist",
            f"--config.data.data_dir={tmp_path / 'empty_tfds'}",
            "--config.data.num_levels=256",
        ]
    )
    _assert_one_sentence(done, "mnist", "not prepared", "tfds build")
    assert not os.path.exists(tmp_path / "run")  # Known from the metadata: nothing written.


def test_full_disk_gets_one_sentence_and_leaves_no_partial_checkpoint(small_disk, data_dir):
    """A 2 MiB disk: the first checkpoint (~2.5 MiB) of configs/tiny.py cannot be written."""
    mount = small_disk
    done = _run([f"--workdir={mount}", f"--config.data.data_dir={data_dir}"])
    _assert_one_sentence(done, f"The disk holding {mount}/checkpoints is full", "step 2")
    assert os.listdir(mount / "checkpoints") == []  # The partial save removed.
    assert "Stopped: The disk holding" in open(mount / "diffax.INFO", errors="replace").read()
