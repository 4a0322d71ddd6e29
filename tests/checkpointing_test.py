"""Tests of checkpointing: checksums, verified restore falling back past damage, safe rotation."""

import errno
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffax import checkpointing, checksums

CONFIG = ml_collections.ConfigDict({"model": {"unet": {"ch": 4}}})


def _state(seed: int, kernel_shape=(64, 64)) -> dict:
    """Returns a tiny train state: a [64, 64] kernel (~16 KiB of data), adam moments, EMA, key."""
    rng = np.random.default_rng(seed)
    params = {
        "conv": {
            "kernel": jnp.asarray(rng.normal(size=kernel_shape).astype(np.float32)),
            "bias": jnp.asarray(rng.normal(size=(4,)).astype(np.float32)),
        }
    }
    opt_state = optax.adam(1e-3).init(params)
    opt_state = jax.tree.map(lambda x: x + seed, opt_state)  # Moments differ between steps.
    return {
        "params": params,
        "opt_state": opt_state,
        "ema_params": (jax.tree.map(lambda x: 0.5 * x, params),),
        "rng": jax.random.PRNGKey(seed),
        "step": jnp.array(seed, jnp.int32),
    }


def _abstract(state: dict) -> dict:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def _save(workdir, steps, keep=3, async_save=False) -> dict:
    """Saves _state(step) at each step; returns {step: state}."""
    with checkpointing.managed(str(workdir), max_to_keep=keep, async_save=async_save) as manager:
        for step in steps:
            assert checkpointing.save(manager, step, _state(step), CONFIG)
    return {step: _state(step) for step in steps}


def _restore(workdir, abstract=None, keep=3):
    """Returns (restore's result, the manager), reading with a fresh manager as a new run does."""
    manager = checkpointing.create_manager(str(workdir), max_to_keep=keep, async_save=False)
    return checkpointing.restore(manager, abstract or _abstract(_state(0))), manager


def _files(root) -> dict[str, str]:
    """Returns {relative path: SHA-256} of every file under root."""
    digests = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def _step_dir(workdir, step: int) -> str:
    return os.path.join(checkpointing.checkpoint_dir(str(workdir)), str(step))


def _data_file(workdir, step: int) -> str:
    """Returns the largest compressed data file of a step (the one holding the kernel)."""
    folder = os.path.join(_step_dir(workdir, step), "state", "ocdbt.process_0", "d")
    return max((os.path.join(folder, f) for f in os.listdir(folder)), key=os.path.getsize)


def _flip_every_4k(path: str, start: int = 0) -> None:
    data = bytearray(open(path, "rb").read())
    for i in range(start, len(data), 4096):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _truncate(path: str, keep: float = 0.5) -> None:
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * keep)])


def _invalid_json(path: str) -> None:
    open(path, "w").write('{"tree_metadata": {"params')


def _overwrite_state(workdir, step: int, state: dict) -> None:
    """Rewrites a checkpoint's state item with a lower-level orbax save, leaving its record."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(_step_dir(workdir, step), "state"), state, force=True)
    checkpointer.wait_until_finished()
    checkpointer.close()


def _messages(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


def test_restore_returns_exactly_what_was_saved_at_the_newest_step(tmp_path):
    saved = _save(tmp_path, [1, 2])
    (state, step), _ = _restore(tmp_path)
    assert step == 2
    chex.assert_trees_all_equal(state, saved[2])


def test_no_checkpoint_restores_to_none(tmp_path):
    assert _restore(tmp_path)[0] is None


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(_flip_every_4k, id="flip-every-4k"),
        pytest.param(lambda p: _flip_every_4k(p, start=2049), id="flip-every-4k-past-header"),
        pytest.param(_truncate, id="truncate"),
        pytest.param(os.remove, id="delete"),
    ],
)
def test_damaged_data_file_falls_back_to_the_newest_intact_step(tmp_path, caplog, damage):
    saved = _save(tmp_path, [1, 2, 3])
    damage(_data_file(tmp_path, 3))
    before = _files(tmp_path)
    caplog.set_level(logging.INFO)
    (state, step), _ = _restore(tmp_path)
    assert step == 2
    chex.assert_trees_all_equal(state, saved[2])
    assert "Checkpoint 3 failed verification" in _messages(caplog)
    assert "resumed from step 2, the newest intact checkpoint." in _messages(caplog)
    assert _files(tmp_path) == before  # Nothing deleted or repaired.


@pytest.mark.parametrize(
    "name",
    [
        "state/_METADATA",
        "_CHECKPOINT_METADATA",
        "state/array_metadatas/process_0",
        "integrity/metadata",
    ],
)
def test_metadata_file_made_invalid_json_falls_back_and_is_named(tmp_path, caplog, name):
    saved = _save(tmp_path, [1, 2])
    _invalid_json(os.path.join(_step_dir(tmp_path, 2), name))
    caplog.set_level(logging.INFO)
    (state, step), _ = _restore(tmp_path)
    assert step == 1
    chex.assert_trees_all_equal(state, saved[1])
    assert f"Checkpoint 2 failed verification: {name} is not valid JSON" in _messages(caplog)


def test_metadata_edited_to_other_names_is_damage_not_a_config_mismatch(tmp_path, caplog):
    _save(tmp_path, [1, 2])
    path = os.path.join(_step_dir(tmp_path, 2), "state", "_METADATA")
    text = open(path).read()
    open(path, "w").write(text.replace('"key": "kernel"', '"key": "kernal"'))  # Still JSON.
    caplog.set_level(logging.INFO)
    assert _restore(tmp_path)[0][1] == 1
    assert "Checkpoint 2 failed verification: orbax could not read it" in _messages(caplog)
    assert "conv.kernal/.zarray" in _messages(caplog)


def test_nan_written_into_params_falls_back_and_names_the_array(tmp_path, caplog):
    saved = _save(tmp_path, [1, 2])
    damaged = _state(2)
    damaged["params"]["conv"]["kernel"] = damaged["params"]["conv"]["kernel"].at[3, 5].set(jnp.nan)
    _overwrite_state(tmp_path, 2, damaged)
    caplog.set_level(logging.INFO)
    (state, step), _ = _restore(tmp_path)
    assert step == 1
    chex.assert_trees_all_equal(state, saved[1])
    assert "non-finite values in params/conv/kernel" in _messages(caplog)


def test_finite_values_changed_on_disk_fail_their_checksum(tmp_path, caplog):
    _save(tmp_path, [1, 2])
    changed = _state(2)
    changed["opt_state"][0].mu["conv"]["bias"] = changed["opt_state"][0].mu["conv"]["bias"] + 0.5
    _overwrite_state(tmp_path, 2, changed)
    caplog.set_level(logging.INFO)
    assert _restore(tmp_path)[0][1] == 1
    assert "checksum mismatch in opt_state/0/mu/conv/bias;" in _messages(caplog)


def _restore_part(workdir, part):
    """Returns restore's result for a part of the state, read as --mode=eval reads the EMA."""
    manager = checkpointing.create_manager(str(workdir), read_only=True, partial=True)
    try:
        return checkpointing.restore(manager, part, partial=True)
    finally:
        checkpointing.close(manager)


def test_partial_restore_reads_and_verifies_the_ema_alone(tmp_path, caplog):
    saved = _save(tmp_path, [1, 2])
    ema = {"ema_params": _abstract(saved[2])["ema_params"]}
    part, step = _restore_part(tmp_path, ema)
    assert step == 2 and set(part) == {"ema_params"}
    chex.assert_trees_all_equal(part["ema_params"], saved[2]["ema_params"])
    # A changed optimizer moment is not the EMA's concern; a changed EMA array falls back.
    changed = _state(2)
    changed["opt_state"][0].mu["conv"]["bias"] = changed["opt_state"][0].mu["conv"]["bias"] + 0.5
    _overwrite_state(tmp_path, 2, changed)
    assert _restore_part(tmp_path, ema)[1] == 2
    assert _restore(tmp_path)[0][1] == 1  # The whole state, as training reads it, is damaged.
    changed["ema_params"][0]["conv"]["bias"] = changed["ema_params"][0]["conv"]["bias"] + 0.5
    _overwrite_state(tmp_path, 2, changed)
    caplog.set_level(logging.INFO)
    part, step = _restore_part(tmp_path, ema)
    assert step == 1
    chex.assert_trees_all_equal(part["ema_params"], saved[1]["ema_params"])
    assert "checksum mismatch in ema_params/0/conv/bias" in _messages(caplog)


def test_partial_restore_of_another_shape_does_not_fit(tmp_path):
    _save(tmp_path, [1])
    other = {"ema_params": _abstract(_state(1, kernel_shape=(32, 64)))["ema_params"]}
    with pytest.raises(ValueError, match=r"does not fit this config .*ema_params/0/conv/kernel"):
        _restore_part(tmp_path, other)


def test_checkpoint_without_a_record_is_accepted_only_if_finite(tmp_path, caplog):
    """Checkpoints written before records existed: plain orbax, no "integrity" item."""
    directory = checkpointing.checkpoint_dir(str(tmp_path))
    handlers = {"state": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler()}
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
    with_nan = _state(2)
    with_nan["ema_params"][0]["conv"]["bias"] = jnp.full((4,), jnp.inf)
    manager = ocp.CheckpointManager(directory, options=options, item_handlers=handlers)
    for step, state in ((1, _state(1)), (2, with_nan)):
        args = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave({})}
        manager.save(step, args=ocp.args.Composite(**args))
    manager.close()
    caplog.set_level(logging.INFO)
    (state, step), _ = _restore(tmp_path)
    assert step == 1
    chex.assert_trees_all_equal(state, _state(1))
    assert "non-finite values in ema_params/0/conv/bias" in _messages(caplog)
    assert "Checkpoint 1 has no checksum record" in _messages(caplog)


def test_all_checkpoints_damaged_raises_one_sentence_and_changes_no_file(tmp_path):
    _save(tmp_path, [1, 2])
    os.remove(_data_file(tmp_path, 2))
    _invalid_json(os.path.join(_step_dir(tmp_path, 1), "state", "_METADATA"))
    before = _files(tmp_path)
    with pytest.raises(checkpointing.CheckpointIntegrityError) as raised:
        _restore(tmp_path)
    message = str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert message.startswith(f"No checkpoint in {checkpointing.checkpoint_dir(str(tmp_path))} ")
    assert "step 2: orbax could not read it" in message
    assert "step 1: state/_METADATA is not valid JSON" in message
    assert "\n" not in message and message.count(". ") == 0
    assert set(raised.value.failures) == {1, 2}
    assert _files(tmp_path) == before


def test_restoring_one_named_step_does_not_fall_back(tmp_path):
    _save(tmp_path, [1, 2])
    os.remove(_data_file(tmp_path, 2))
    manager = checkpointing.create_manager(str(tmp_path), async_save=False)
    with pytest.raises(checkpointing.CheckpointIntegrityError, match="step 2: "):
        checkpointing.restore(manager, _abstract(_state(0)), step=2)
    assert checkpointing.restore(manager, _abstract(_state(0)), step=1)[1] == 1


def test_shape_mismatch_raises_does_not_fit_at_once_without_fallback(tmp_path, caplog):
    _save(tmp_path, [1, 2])
    caplog.set_level(logging.INFO)
    other = _abstract(_state(0, kernel_shape=(32, 64)))
    with pytest.raises(ValueError, match="does not fit this config.*params/conv/kernel") as raised:
        _restore(tmp_path, other)
    assert not isinstance(raised.value, checkpointing.CheckpointIntegrityError)
    assert "failed verification" not in _messages(caplog)


def test_restoring_into_another_dtype_verifies_the_saved_bits_then_casts(tmp_path):
    saved = _save(tmp_path, [1])
    abstract = _abstract(_state(0))
    abstract["params"]["conv"]["kernel"] = jax.ShapeDtypeStruct((64, 64), jnp.bfloat16)
    (state, step), _ = _restore(tmp_path, abstract)
    assert step == 1 and state["params"]["conv"]["kernel"].dtype == jnp.bfloat16
    want = saved[1]["params"]["conv"]["kernel"].astype(jnp.bfloat16)
    chex.assert_trees_all_equal(state["params"]["conv"]["kernel"], want)


def test_rotation_keeps_the_failed_step_and_the_intact_one_until_newer_ones_exist(tmp_path):
    """A run with keep=2 checkpointed 1, 2, 3; step 3 is damaged; the resumed run saves 4, 5."""
    _save(tmp_path, [1, 2, 3], keep=2)
    directory = checkpointing.checkpoint_dir(str(tmp_path))
    assert sorted(os.listdir(directory)) == ["2", "3"]
    _flip_every_4k(_data_file(tmp_path, 3), start=2049)
    damaged = _files(os.path.join(directory, "3"))
    with checkpointing.managed(str(tmp_path), max_to_keep=2, async_save=True) as manager:
        state, step = checkpointing.restore(manager, _abstract(_state(0)))
        assert step == 2
        assert checkpointing.save(manager, 4, _state(4), CONFIG)
        manager.wait_until_finished()
        assert sorted(os.listdir(directory)) == ["2", "3", "4"]
        assert checkpointing.save(manager, 5, _state(5), CONFIG)
    assert sorted(os.listdir(directory)) == ["3", "4", "5"]
    assert _files(os.path.join(directory, "3")) == damaged


def test_steps_to_keep_keeps_failed_steps_and_the_newest_good_one():
    keep = checkpointing.steps_to_keep
    assert keep([1, 2, 3, 4], 2, good={4}, failed=set()) == {3, 4}
    assert keep([1, 2, 3, 4], 2, good={2, 4}, failed={3}) == {2, 3, 4}
    assert keep([1, 2, 3, 4], 0, good={2}, failed={4}) == {2, 4}
    assert keep([1, 2, 3], 1, good={1}, failed=set()) == {1, 3}
    assert keep([1, 2, 3], None, good=set(), failed=set()) == {1, 2, 3}


def test_non_finite_state_is_refused_and_nothing_is_written(tmp_path):
    _save(tmp_path, [1])
    state = _state(2)
    state["opt_state"][0].nu["conv"]["kernel"] = (
        state["opt_state"][0].nu["conv"]["kernel"] * jnp.nan
    )
    before = _files(tmp_path)
    with checkpointing.managed(str(tmp_path), max_to_keep=1, async_save=False) as manager:
        with pytest.raises(FloatingPointError, match="opt_state/0/nu/conv/kernel"):
            checkpointing.save(manager, 2, state, CONFIG)
    assert _files(tmp_path) == before


def test_state_unchanged_since_restore_is_not_saved_again(tmp_path):
    _save(tmp_path, [1, 2], keep=1)
    with checkpointing.managed(str(tmp_path), max_to_keep=1, async_save=False) as manager:
        state, _ = checkpointing.restore(manager, _abstract(_state(0)))
        assert not checkpointing.save(manager, 3, state, CONFIG)
    assert sorted(os.listdir(checkpointing.checkpoint_dir(str(tmp_path)))) == ["2"]


def test_step_that_failed_verification_is_never_overwritten(tmp_path):
    _save(tmp_path, [1, 2])
    _truncate(_data_file(tmp_path, 2))
    before = _files(_step_dir(tmp_path, 2))
    with checkpointing.managed(str(tmp_path), async_save=False) as manager:
        assert checkpointing.restore(manager, _abstract(_state(0)))[1] == 1
        assert not checkpointing.save(manager, 2, _state(7), CONFIG)
    assert _files(_step_dir(tmp_path, 2)) == before


def test_close_finishes_an_async_save(tmp_path):
    manager = checkpointing.create_manager(str(tmp_path), async_save=True)
    assert checkpointing.save(manager, 1, _state(1), CONFIG)
    assert checkpointing.close(manager)
    (state, step), _ = _restore(tmp_path)
    assert step == 1
    chex.assert_trees_all_equal(state, _state(1))


def test_checksums_do_not_depend_on_sharding():
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
    state = _state(3)
    sharded = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    kernel = NamedSharding(mesh, PartitionSpec("data", "model"))
    sharded["params"]["conv"]["kernel"] = jax.device_put(state["params"]["conv"]["kernel"], kernel)
    mixed = dict(state, params=sharded["params"])  # Some leaves on one device, some on eight.
    assert checksums.fingerprint(sharded) == checksums.fingerprint(state)
    assert checksums.fingerprint(mixed) == checksums.fingerprint(state)


@settings(max_examples=20, deadline=None)
@given(
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16, jnp.int32, jnp.uint8, jnp.bool_]),
    position=st.integers(0, 5 * 7 - 1),
    bit=st.integers(0, 31),
)
def test_any_single_bit_change_changes_the_checksum(dtype, position, bit):
    values = jnp.asarray(np.random.default_rng(0).normal(size=(5, 7)) * 50).astype(dtype)
    words = np.array(
        jax.lax.bitcast_convert_type(values, jnp.uint8) if dtype != jnp.bool_ else values
    )
    flat = words.reshape(5 * 7, -1)
    bits_per_element = 1 if dtype == jnp.bool_ else flat.shape[1] * 8
    bit %= bits_per_element
    flat[position, bit // 8] ^= np.array(1 << (bit % 8)).astype(flat.dtype)
    changed = (
        words if dtype == jnp.bool_ else jax.lax.bitcast_convert_type(jnp.asarray(words), dtype)
    )
    before = checksums.fingerprint({"x": values})["x"].digest
    assert checksums.fingerprint({"x": jnp.asarray(changed)})["x"].digest != before


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A workdir holding intact checkpoints at steps 1, 2, 3, and the states saved there."""
    workdir = tmp_path_factory.mktemp("pristine")
    return workdir, _save(workdir, [1, 2, 3])


DAMAGES = ["flip_every_4k", "flip_bit", "truncate", "delete", "invalid_json", "zero", "append"]


@settings(max_examples=10, deadline=None)
@given(
    step=st.sampled_from([1, 2, 3]),
    file_index=st.integers(0, 10**6),
    damage=st.sampled_from(DAMAGES),
    where=st.floats(0, 1),
)
def test_restore_never_returns_damaged_values(pristine, step, file_index, damage, where):
    """Whatever one file of one checkpoint suffers, restore returns what was saved at its step."""
    source, saved = pristine
    workdir = tempfile.mkdtemp()
    try:
        shutil.copytree(source, workdir, dirs_exist_ok=True)
        step_dir = _step_dir(workdir, step)
        files = sorted(os.path.join(d, f) for d, _, names in os.walk(step_dir) for f in names)
        path = files[file_index % len(files)]
        data = bytearray(open(path, "rb").read())
        offset = int(where * max(len(data) - 1, 0))
        if damage == "delete":
            os.remove(path)
        elif damage == "invalid_json":
            _invalid_json(path)
        elif damage == "flip_every_4k":
            _flip_every_4k(path, start=offset % 4096)
        elif damage == "truncate":
            _truncate(path, keep=where)
        else:
            if damage == "flip_bit" and data:
                data[offset] ^= 1 << (offset % 8)
            elif damage == "zero":
                data[offset : offset + 64] = bytes(len(data[offset : offset + 64]))
            elif damage == "append":
                data += b"\x00garbage"
            open(path, "wb").write(bytes(data))
        try:
            (state, restored_step), _ = _restore(workdir)
        except checkpointing.CheckpointIntegrityError:
            return
        chex.assert_trees_all_equal(state, saved[restored_step])
    finally:
        shutil.rmtree(workdir)


WORKER = """
import os, sys
repo, workdir, process_id, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, repo)
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{port}", 2, process_id)
import ml_collections, numpy as np, orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from diffax import checkpointing

mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
shardings = {
    "k": NamedSharding(mesh, PartitionSpec("data", "model")),
    "b": NamedSharding(mesh, PartitionSpec()),
}
def host(seed):
    rng = np.random.default_rng(seed)
    values = {"k": rng.normal(size=(64, 64)), "b": rng.normal(size=(4,))}
    return {k: v.astype(np.float32) for k, v in values.items()}
def state(seed):
    return {
        k: jax.make_array_from_callback(v.shape, shardings[k], lambda i, v=v: v[i])
        for k, v in host(seed).items()
    }
config = ml_collections.ConfigDict({"a": 1})
with checkpointing.managed(workdir, max_to_keep=3) as manager:
    for step in (1, 2, 3):
        checkpointing.save(manager, step, state(step), config)
multihost_utils.sync_global_devices("saved")
checkpoints = checkpointing.checkpoint_dir(workdir)
if process_id == 0:  # Step 3: process 1's data files cut short; only process 1 reads them.
    folder = checkpoints / "3" / "state" / "ocdbt.process_1" / "d"
    for path in folder.iterdir():
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
checkpointer = ocp.StandardCheckpointer()  # Step 2: other values; only checksums notice.
checkpointer.save(checkpoints / "2" / "state", {"k": state(7)["k"], "b": state(2)["b"]}, force=True)
checkpointer.wait_until_finished()
checkpointer.close()
multihost_utils.sync_global_devices("damaged")
abstract = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k]) for k, v in state(0).items()
}
with checkpointing.managed(workdir, max_to_keep=3) as manager:
    restored, step = checkpointing.restore(manager, abstract)
    kernel = np.asarray(multihost_utils.process_allgather(restored["k"], tiled=True))
    same = np.array_equal(kernel, host(step)["k"])
    print("RESULT", step, same, sorted(manager.ledger.failed), flush=True)
"""


def test_two_processes_fall_back_together_past_orbax_errors_and_checksum_mismatches(tmp_path):
    """Step 3 fails in orbax on one process only, step 2 on checksums; both resume from 1."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    args = [sys.executable, str(script), repo, str(tmp_path / "work")]
    procs = [
        subprocess.Popen(
            [*args, str(i), port],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        logs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
        assert "RESULT 1 True [2, 3]" in log, log[-3000:]


# Tensorstore's writes still in flight call back into the event loop orbax closed after the
# first failure; Python reports those as unraisable (diffax.main sends them to the log file).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("async_save", [True, False])
def test_a_full_disk_removes_the_partial_save_and_keeps_complete_checkpoints(
    small_disk, async_save
):
    workdir = str(small_disk / "run")
    saved = _save(workdir, [1])
    big = _state(2, kernel_shape=(1024, 1024))  # 4 MiB of random floats: more than the disk.
    with checkpointing.managed(workdir, async_save=async_save) as manager:
        with pytest.raises(checkpointing.DiskFullError) as full:
            checkpointing.save(manager, 2, big, CONFIG)
            checkpointing.wait(manager)
    message = str(full.value)
    assert full.value.errno == errno.ENOSPC and "\n" not in message
    assert f"The disk holding {checkpointing.checkpoint_dir(workdir)} is full" in message
    assert "step 2 could not be written" in message and "kept: step 1." in message
    assert sorted(os.listdir(checkpointing.checkpoint_dir(workdir))) == ["1"]  # No tmp folder.
    (state, step), _ = _restore(workdir, _abstract(saved[1]))
    assert step == 1
    chex.assert_trees_all_equal(state, saved[1])
