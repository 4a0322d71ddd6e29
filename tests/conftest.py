"""Test setup: eight fake CPU devices, set before anything imports jax."""

import os
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
def classifier_path(tmp_path_factory):
    """One trained digits classifier (about 10 s) per test process."""
    from diffax.metrics import digits_classifier

    path = str(tmp_path_factory.mktemp("classifier") / "digits_classifier")
    digits_classifier.get_or_train_classifier(path)
    return path
