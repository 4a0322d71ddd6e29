"""Tests of diffax.compilation_cache: where the main job's persistent cache lives, and that a
second process reads its train step from it instead of compiling."""

import os
import pathlib
import subprocess
import sys

from diffax import compilation_cache

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_flag_wins_then_jaxs_own_setting_then_the_variable_then_the_default():
    resolve = compilation_cache.resolve
    home = {"HOME": "/home/u", "XDG_CACHE_HOME": "/xdg"}
    assert resolve("/flag", {**home, "JAX_COMPILATION_CACHE_DIR": "/jax"}) == "/flag"
    assert resolve("", home) is None  # --compilation_cache='' turns it off.
    assert resolve(None, {**home, "JAX_COMPILATION_CACHE_DIR": "/jax"}) is None  # JAX's own.
    assert resolve(None, {**home, compilation_cache.ENV: "/env"}) == "/env"
    assert resolve(None, {**home, compilation_cache.ENV: ""}) is None
    assert resolve(None, home) == "/xdg/diffax/jax"
    assert compilation_cache.default_dir({}).endswith(os.path.join(".cache", "diffax", "jax"))


COMPILE_TWICE = """
import sys
from diffax import compilation_cache, train
from configs import tiny
folder = compilation_cache.configure(sys.argv[1], environ={})
config = tiny.get_config()
config.data.data_dir = sys.argv[2]
train.Trainer(config).compile(config.training.batch_size)
print(folder, compilation_cache.counts()["hits"], compilation_cache.counts()["misses"])
"""


def _compile_in_a_new_process(cache, data_dir):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR", compilation_cache.ENV)
    }
    done = subprocess.run(
        [sys.executable, "-c", COMPILE_TWICE, str(cache), data_dir],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    folder, hits, misses = done.stdout.split()[-3:]
    return folder, int(hits), int(misses)


def test_a_second_process_reads_the_train_step_from_the_cache(tmp_path, data_dir):
    cache = tmp_path / "cache"
    folder, hits, misses = _compile_in_a_new_process(cache, data_dir)
    assert folder == str(cache) and misses >= 1 and hits == 0
    assert any(cache.iterdir())  # The step's executable was written.
    _, hits, misses = _compile_in_a_new_process(cache, data_dir)
    assert hits >= 1 and misses == 0


def test_a_refused_config_creates_no_cache_folder(tmp_path, data_dir):
    cache = tmp_path / "cache"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffax.main",
            "--config=configs/tiny.py",
            f"--workdir={tmp_path / 'run'}",
            f"--config.data.data_dir={data_dir}",
            "--config.training.batch_size=0",
            f"--compilation_cache={cache}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1 and "training.batch_size" in done.stderr
    assert not cache.exists()
