"""End-to-end tests of `python -m diffax.main` in real subprocesses: runs, faults and exit codes."""

import glob
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import SMALL_UNET

from configs import tiny_text
from diffax import preemption
from diffax.datasets import captions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _command(workdir, data_dir, *overrides, mode="train", config="configs/tiny.py"):
    return [
        sys.executable,
        "-m",
        "diffax.main",
        f"--config={config}",
        f"--workdir={workdir}",
        f"--mode={mode}",
        f"--config.data.data_dir={data_dir}",
        *overrides,
    ]


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # One CPU device, as a user's laptop.
    return env


def _run(*args, timeout=300, **kwargs):
    return subprocess.run(
        _command(*args, **kwargs),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _start(*args, **kwargs):
    return subprocess.Popen(
        _command(*args, **kwargs),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _steps(workdir):
    """Returns the steps of the workdir's checkpoints, oldest first."""
    return sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")) if p.isdigit())


def _params_at(workdir, step):
    """Reads a checkpoint's parameters with a plain orbax restore (no diffax code)."""
    import orbax.checkpoint as ocp

    path = os.path.join(workdir, "checkpoints", str(step), "state")
    return ocp.StandardCheckpointer().restore(path)["params"]


def _final_params(workdir):
    """Returns (step, parameters) of the newest checkpoint."""
    step = _steps(workdir)[-1]
    return step, _params_at(workdir, step)


def _log_has(workdir, text):
    path = os.path.join(workdir, "diffax.INFO")
    return os.path.exists(path) and text in open(path, errors="replace").read()


# An absl-formatted Python log line: level letter, date, time, thread, file:line].
_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+ +\d+ (\w+\.py):\d+\]", re.MULTILINE)
_DIFFAX_FILES = {path.name for path in pathlib.Path(ROOT, "diffax").rglob("*.py")}


def _info_files(text: str) -> set[str]:
    """Returns the source files of the Python INFO lines in a log text."""
    return {name for level, name in _LOG_LINE.findall(text) if level == "I"}


def test_train_then_eval_and_sample_modes(data_dir, tmp_path, classifier_path):
    workdir = str(tmp_path)
    done = _run(workdir, data_dir, *SMALL_UNET, f"--config.eval.classifier_path={classifier_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    # The console: diffax's own INFO lines only (progress, results); the log file: orbax's too.
    assert "step 4:" in done.stderr and "Eval at step 4" in done.stderr
    assert _info_files(done.stderr) <= _DIFFAX_FILES, _info_files(done.stderr) - _DIFFAX_FILES
    assert {"checkpoint_manager.py", "async_checkpointer.py"} <= _info_files(
        open(os.path.join(workdir, "diffax.INFO"), errors="replace").read()
    )
    with open(os.path.join(workdir, "eval_00000004.json")) as f:
        results = json.load(f)
    assert np.isfinite(results["test/bpd"]) and 0 <= results["samples/digits_class_accuracy"] <= 1
    assert os.path.exists(os.path.join(workdir, "eval_samples_00000004.png"))
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    sample = _run(workdir, data_dir, *SMALL_UNET, "--num_samples=3", "--verbose", mode="sample")
    assert sample.returncode == 0, sample.stderr[-3000:]
    # What made them: DDPM respaced to tiny's 10 steps, digits' guidance 1, 3 samples; the chain.
    assert os.path.exists(os.path.join(workdir, "samples_00000004_ddpm10_g1_n3.png"))
    assert os.path.exists(os.path.join(workdir, "samples_00000004_ddpm10_g1_n3_chain.gif"))
    assert "checkpoint_manager.py" in _info_files(sample.stderr)  # --verbose: every line.


def test_text_model_trains_evaluates_on_held_out_prompts_and_samples_from_a_prompt(
    data_dir, tmp_path, classifier_path
):
    workdir = str(tmp_path)
    text = [f"--config.eval.classifier_path={classifier_path}", *SMALL_UNET]
    config = "configs/tiny_text.py"
    # The text model compiles three programs (train step, bound, guided sampler): a longer limit
    # for a loaded machine.
    done = _run(
        workdir, data_dir, *text, "--config.eval.num_bpd_examples=8", config=config, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(workdir, "eval_00000004.json")) as f:
        results = json.load(f)
    assert 0.0 <= results["samples/digits_class_accuracy"] <= 1.0
    assert results["forward_passes_per_sample"] == 2 * results["sampler_nfe"]  # Guided.
    assert "someone wrote a {word}" in results["prompts"]
    # Which digit the classifier reads for each held-out template and named digit: every sample
    # counted once, in its template's table.
    read_as = results["digits_read_as"]
    assert set(read_as) <= set(captions.HELDOUT_TEMPLATES)
    counts = np.array([list(table.values()) for table in read_as.values()])  # [templates, 10, 10]
    assert counts.sum() == tiny_text.get_config().eval.num_samples
    for k, template in enumerate(captions.HELDOUT_TEMPLATES):
        if template in read_as:
            table = np.array(list(read_as[template].values()))
            accuracy = results[f"samples/digits_class_accuracy_{k}"]
            assert np.trace(table) / table.sum() == pytest.approx(accuracy)
    sample = _run(
        workdir,
        data_dir,
        *text,
        "--num_samples=16",  # The eval's batch shape, without the chain: its compiled sampler.
        "--config.eval.chain_frames=0",
        "--prompt=a handwritten three",
        mode="sample",
        config=config,
        timeout=900,
    )
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert len(glob.glob(os.path.join(workdir, "samples_00000004_ddpm10_g1_p*_n16.png"))) == 1


def test_eval_without_checkpoint_and_bad_config_fail_in_one_sentence(data_dir, tmp_path):
    empty = _run(str(tmp_path / "empty"), data_dir, mode="eval")
    assert empty.returncode == 1
    assert "diffax: error: No checkpoint in" in empty.stderr
    assert "Traceback" not in empty.stderr
    bad = _run(str(tmp_path / "bad"), data_dir, "--config.diffusion.var_type=fixed_tiny")
    assert bad.returncode == 1
    assert "diffax: error: diffusion.var_type='fixed_tiny' is not one of" in bad.stderr
    assert "Traceback" not in bad.stderr


QUICK_EVAL = ("--config.eval.num_bpd_examples=8", "--config.eval.quality_metrics=False")
# The resume tests' runs: REFERENCE_STEPS steps, a checkpoint at each (the killed runs need them).
REFERENCE_STEPS = 8
EVERY_STEP = (
    *SMALL_UNET,
    f"--config.training.num_steps={REFERENCE_STEPS}",
    "--config.training.checkpoint_every=1",
    f"--config.training.keep_checkpoints={REFERENCE_STEPS}",
)


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    """The workdir of one run never interrupted, with its parameters at every step: what a
    stopped and resumed run must end on (shared by the Ctrl-C and SIGKILL tests)."""
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    done = _run(workdir, data_dir, *EVERY_STEP, *QUICK_EVAL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _steps(workdir) == list(range(1, REFERENCE_STEPS + 1))
    return workdir


@pytest.mark.xdist_group("resume")  # With the SIGKILL test: one worker, one reference run.
@pytest.mark.parametrize(
    ("signum", "status", "said"),
    [
        (signal.SIGTERM, preemption.PREEMPTED_EXIT_CODE, "Preempted"),
        (signal.SIGINT, preemption.INTERRUPTED_EXIT_CODE, "Interrupted (Ctrl-C)"),
    ],
    ids=["sigterm", "ctrl-c"],
)
def test_a_signal_saves_at_the_next_step_and_exits_with_its_status(
    data_dir, tmp_path, signum, status, said, request
):
    """SIGTERM exits 75 (retry), Ctrl-C 130; both save at the step boundary after the signal and
    say so in one console line. After Ctrl-C, the resumed run ends on the parameters of a run
    never interrupted (the same code path for both signals: checked once)."""
    workdir = str(tmp_path / "stopped")
    proc = _start(
        workdir,
        data_dir,
        *SMALL_UNET,
        "--config.training.num_steps=100000",
        "--config.training.log_every=1",
        "--config.training.checkpoint_every=100000",
    )
    deadline = time.time() + 240
    while not _log_has(workdir, "step 3:") and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.2)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == status, stderr[-3000:]
    step, params = _final_params(workdir)
    assert step >= 3  # Saved at the step boundary after the signal, not at checkpoint_every.
    assert _log_has(workdir, f"saved the checkpoint at step {step}")
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and [line for line in lines if said in line] == lines[-1:]
    assert lines[-1].endswith(f"{said}: checkpoint saved at step {step}; rerun to resume.")
    if signum != signal.SIGINT:
        return
    resumed = _run(
        workdir, data_dir, *SMALL_UNET, f"--config.training.num_steps={step + 2}", *QUICK_EVAL
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _log_has(workdir, f"Resumed from step {step}")
    end = _final_params(workdir)[0]
    assert end == step + 2
    if end <= REFERENCE_STEPS:  # The shared run has every step's parameters.
        reference = request.getfixturevalue("uninterrupted")
    else:  # A slow machine ran on past the shared run's end: an uninterrupted run of our own.
        reference = str(tmp_path / "reference")
        done = _run(reference, data_dir, *SMALL_UNET, f"--config.training.num_steps={end}")
        assert done.returncode == 0, done.stderr[-3000:]
    import jax

    jax.tree.map(
        np.testing.assert_array_equal, _params_at(reference, end), _params_at(workdir, end)
    )


@pytest.mark.xdist_group("resume")
def test_sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run(
    data_dir, tmp_path, uninterrupted
):
    workdir = str(tmp_path / "killed")
    rng = random.Random(0)
    for _ in range(3):
        proc = _start(workdir, data_dir, *EVERY_STEP)
        # Wait for the loop to run (or to be near the end), then kill at a random moment.
        deadline = time.time() + 240
        while not _log_has(workdir, "Compiled the train step") and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.kill()
        proc.wait()
    resumed = _run(workdir, data_dir, *EVERY_STEP, *QUICK_EVAL)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _log_has(workdir, "diffax.lock, left by process")  # The killed run's lock: taken over.
    step, params = _final_params(workdir)
    assert step == REFERENCE_STEPS
    import jax

    jax.tree.map(np.testing.assert_array_equal, _params_at(uninterrupted, step), params)


def test_latent_diffusion_trains_on_a_main_trained_gan_autoencoder_and_decodes_samples(
    data_dir, tmp_path
):
    autoencoder = str(tmp_path / "autoencoder")
    tiny_autoencoder = (
        "--config.data.image_size=16",  # f = 2: 8x8x4 latents, tiny.py's image size.
        "--config.model.autoencoder.block_out_channels=(8,8)",
        "--config.model.autoencoder.norm_num_groups=4",
        "--config.training.num_steps=2",
        "--config.training.warmup_steps=1",
        "--config.training.checkpoint_every=2",
        "--config.eval.batch_size=120",
        "--config.model.discriminator.ndf=4",  # The GAN (disc_weight 0.5) from step 1.
        "--config.training.disc_start=1",
    )
    done = subprocess.run(
        [
            *_command(autoencoder, data_dir, *tiny_autoencoder)[:3],
            "--config=configs/digits_autoencoder_gan.py",
            *_command(autoencoder, data_dir, *tiny_autoencoder)[4:],
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = open(os.path.join(autoencoder, "diffax.INFO"), errors="replace").read()
    last = log.split("step 2: ", 1)[1].split("\n", 1)[0]
    assert float(last.split(" d_loss ")[1].split()[0]) > 0, last  # The discriminator trained.
    with open(os.path.join(autoencoder, "latent_stats.json")) as f:
        stats = json.load(f)
    scale = stats["scale"]
    assert len(stats["channel_scale"]) == len(stats["channel_shift"]) == 4
    latent_fields = (
        *SMALL_UNET,
        "--config.latent.autoencoder=workdir",
        f"--config.latent.autoencoder_workdir={autoencoder}",
        "--config.latent.normalization=per_channel",
        "--config.data.num_channels=4",
        "--config.diffusion.schedule=linear",  # LDM's; at T = 20 its last beta would be 1.
        "--config.diffusion.num_timesteps=40",
        "--config.eval.clip_denoised=False",
        "--config.eval.quality_metrics=False",
    )
    workdir = str(tmp_path / "latent")
    done = _run(workdir, data_dir, *latent_fields)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(workdir, "eval_00000004.json")) as f:
        results = json.load(f)
    assert np.isfinite(results["test/latent_bpd"]) and "test/bpd" not in results
    assert results["test/latent_num_examples"] == 32
    samples = np.load(os.path.join(workdir, "eval_samples_00000004.npz"))["levels"]
    assert samples.shape == (16, 16, 16, 1)  # Decoded: the autoencoder's 16x16 images.
    with open(os.path.join(workdir, "latents", "train", "meta.json")) as f:
        meta = json.load(f)
    assert meta["count"] == 1437 and meta["fingerprint"]["autoencoder_version"] == "step 2"
    assert _log_has(workdir, "Cached 1437 encoded examples of train")
    assert scale > 0  # A missing autoencoder workdir: latents_test (one sentence, in-process).


def test_text_conditioned_latent_model_trains_and_decodes_a_prompt(data_dir, tmp_path):
    from conftest import make_autoencoder_workdir

    autoencoder = str(tmp_path / "autoencoder")  # Untrained, f = 2: 8x8x4 latents of 16x16.
    make_autoencoder_workdir(autoencoder, data_dir)
    fields = (
        f"--config.latent.autoencoder_workdir={autoencoder}",
        "--config.model.unet.ch=32",  # The end-to-end denoiser, on 8x8x4 latents.
        *SMALL_UNET,
        "--config.model.text.width=32",
        "--config.model.text.depth=1",
        "--config.model.text.num_heads=2",
        "--config.diffusion.num_timesteps=40",
        "--config.training.batch_size=16",
        "--config.training.num_steps=2",
        "--config.training.warmup_steps=1",
        "--config.training.sample_every=0",
        "--config.eval.batch_size=32",
        "--config.eval.num_bpd_examples=8",
        "--config.eval.num_samples=16",
        "--config.eval.sample_steps=5",
        "--config.eval.quality_metrics=False",
    )
    config = "configs/digits_latent_text.py"
    workdir = str(tmp_path / "latent_text")
    done = _run(workdir, data_dir, *fields, config=config, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(workdir, "eval_00000002.json")) as f:
        results = json.load(f)
    assert np.isfinite(results["test/latent_bpd"])
    assert results["forward_passes_per_sample"] == 2 * results["sampler_nfe"]  # Guided.
    assert "someone wrote a {word}" in results["prompts"]
    sample = _run(
        workdir,
        data_dir,
        *fields,
        "--num_samples=16",  # The eval's batch shape, without the chain: its compiled sampler.
        "--config.eval.chain_frames=0",
        "--prompt=a handwritten three",
        mode="sample",
        config=config,
        timeout=900,
    )
    assert sample.returncode == 0, sample.stderr[-3000:]
    (path,) = glob.glob(os.path.join(workdir, "samples_00000002_*_p*_n16.npz"))
    assert str(np.load(path)["prompt"]) == "a handwritten three"
    levels = np.load(path)["levels"]
    assert levels.shape == (16, 16, 16, 1)  # Decoded to the autoencoder's images.


def test_text_model_on_stored_embeddings_trains_evaluates_and_refuses_a_prompt(data_dir, tmp_path):
    pattern = str(tmp_path / "emb" / "{split}.npz")
    embed = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffax.tools.embed_captions",
            "--config=configs/tiny_text.py",
            f"--config.data.data_dir={data_dir}",
            f"--out={pattern}",
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert embed.returncode == 0, embed.stderr[-3000:]
    stored = [
        *SMALL_UNET,
        f"--config.data.text_embeddings={pattern}",
        "--config.eval.num_bpd_examples=8",
        "--config.eval.quality_metrics=False",
    ]
    workdir = str(tmp_path / "run")
    done = _run(workdir, data_dir, *stored, config="configs/tiny_text.py", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(workdir, "eval_00000004.json")) as f:
        results = json.load(f)
    assert np.isfinite(results["test/bpd"]) and "stored embeddings of test" in results["prompts"]
    assert results["forward_passes_per_sample"] == 2 * results["sampler_nfe"]  # Guided.
    params = _final_params(workdir)[1]
    assert set(params) == {"denoiser"}  # No text encoder trained.
    sample = _run(
        workdir,
        data_dir,
        *stored,
        "--prompt=a handwritten three",
        mode="sample",
        config="configs/tiny_text.py",
    )
    assert sample.returncode == 1
    assert "cannot encode new text" in sample.stderr and "Traceback" not in sample.stderr
