"""Test setup: eight fake CPU devices, set before anything imports jax."""

import os
import subprocess
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Programs compiled by one test (a train step, a sampler) are reused by the next from the
# persistent cache; each pytest-xdist worker shares the same folder.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "diffax-test-jax-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest  # noqa: E402  (after the environment above: nothing may import jax first)

from diffax import tasks

# configs/tiny.py's U-Net cut to one 8x8 level whose only attention is the middle block's (with a
# context, its cross-attention): the end-to-end runs of `python -m diffax.main` test the job (steps,
# checkpoints, signals, eval, samples), not the network, and this one compiles in about half the
# time. One tuple for every such run, so their programs repeat and hit the compilation cache.
SMALL_UNET = (
    "--config.model.unet.channel_mult=(1,)",
    "--config.model.unet.attention_resolutions=()",
)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One digits TFDS folder per test process, prepared offline on first use."""
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture
def tiny_config(data_dir):
    """Returns make(**fields): configs/tiny.py on the shared data_dir with dotted overrides,
    e.g. make(**{"training.num_steps": 4}) or make(num_steps=4) for training fields."""
    from configs import tiny

    def make(**fields):
        config = tiny.get_config()
        config.data.data_dir = data_dir
        for name, value in fields.items():
            section, field = name.split(".") if "." in name else ("training", name)
            config[section][field] = value
        return config

    return make


@pytest.fixture(scope="session")
def digits_split():
    """(train images, train labels, test images, test labels) of the digits, as arrays."""
    from diffax.metrics import digits_classifier

    return digits_classifier.load_digits_split()


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory):
    """Random weights for the full FID Inception-v3 (scaled to keep activations O(1)), saved with
    inception.save_params: for tests of the plumbing, not of the network."""
    import jax
    import numpy as np

    from diffax.metrics import inception

    rng = np.random.default_rng(0)

    def fill(path, spec):
        leaf = path[-1].key
        if leaf == "kernel":
            fan_in = int(np.prod(spec.shape[:-1]))
            return rng.normal(size=spec.shape) * np.sqrt(2.0 / fan_in)
        if leaf in ("scale", "var"):
            return rng.uniform(0.5, 1.5, size=spec.shape)
        return rng.normal(size=spec.shape) * 0.1

    variables = jax.tree_util.tree_map_with_path(fill, inception.abstract_variables())
    path = str(tmp_path_factory.mktemp("inception") / "weights.npz")
    inception.save_params(path, variables)
    return path


@pytest.fixture(scope="session")
def classifier_path(tmp_path_factory):
    """One trained digits classifier (about 10 s) per test process."""
    from diffax.metrics import digits_classifier

    path = str(tmp_path_factory.mktemp("classifier") / "digits_classifier")
    digits_classifier.get_or_train_classifier(path)
    return path


def make_autoencoder_workdir(workdir, data_dir, num_steps=1, scale=2.0, channel_stats=None):
    """Writes an untrained tiny digits autoencoder's checkpoint (16x16 images -> 8x8x4 latents,
    f = 2) at step num_steps and a latent_stats.json of that step (with channel_stats = (shift,
    scale) lists, per-channel statistics too); returns its config."""
    import json

    import jax

    from configs import digits_autoencoder
    from diffax import build, checkpointing

    config = digits_autoencoder.get_config()
    config.data.data_dir = data_dir
    config.data.image_size = 16
    config.model.autoencoder.block_out_channels = (8, 8)
    config.model.autoencoder.norm_num_groups = 4
    config.training.num_steps = num_steps
    model, tx = build.create_model(config), tasks.create_optimizer(config)
    key = jax.random.key(0, impl="rbg")  # threefry's init of ~100 leaves compiles slowly.
    state = tasks.init_state(key, model=model, tx=tx, config=config)
    state = state.replace(step=state.step + num_steps, rng=jax.random.PRNGKey(0))
    with checkpointing.managed(str(workdir)) as manager:
        checkpointing.save(manager, num_steps, state, config)
    with open(os.path.join(str(workdir), "latent_stats.json"), "w") as f:
        stats = {"step": num_steps, "scale": scale, "mean": 0.0}
        if channel_stats is not None:
            stats["channel_shift"], stats["channel_scale"] = map(list, channel_stats)
        json.dump(stats, f)
    return config


@pytest.fixture(scope="session")
def autoencoder_workdir(tmp_path_factory, data_dir):
    """A tiny digits autoencoder workdir (untrained weights, latent scale 2) for latent tests."""
    workdir = tmp_path_factory.mktemp("autoencoder")
    make_autoencoder_workdir(workdir, data_dir)
    return str(workdir)


@pytest.fixture
def latent_config(tiny_config, autoencoder_workdir):
    """Returns make(**fields): tiny_config on the tiny autoencoder's 8x8x4 latents."""

    def make(**fields):
        config = tiny_config(**fields)
        config.latent.autoencoder = "workdir"
        config.latent.autoencoder_workdir = autoencoder_workdir
        config.data.num_channels = 4
        config.eval.clip_denoised = False
        return config

    return make


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB file system to fill (a tmpfs), for the full-disk tests.

    Only a real ENOSPC from the kernel shows what orbax and tensorstore do when a save runs out
    of space (the error surfaces at the next save or wait, as text inside their exceptions); a
    faked OSError would test our own guess of that. Mounting needs root (CI's containers and this
    workplace have it): where it is refused the test is skipped with that reason, as issue 26
    asks, rather than run against a fake.
    """
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("mounting a 2 MiB tmpfs (a disk to fill) is not permitted here")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)
