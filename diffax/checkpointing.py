"""Orbax checkpoints of the train state with its config and checksums: save, verify, restore.

Each checkpoint `<workdir>/checkpoints/<step>/` holds three orbax items, committed together by
orbax's atomic finalize: "state" (the train state), "config" (JSON) and "integrity" (JSON: one
checksum per array of the state, keyed by its path, e.g. "params/down_0_res_0/in_conv/kernel").

The checksums are `diffax.checksums`' 64-bit array digests.

What orbax and tensorstore catch by themselves (orbax 0.12.8): damage that breaks a zstd frame
(e.g. its first bytes), a truncated or deleted data file, a damaged OCDBT manifest or B-tree node
("DATA_LOSS"), `state/_METADATA` that is not valid JSON. They miss a flipped bit inside compressed
array data (the values change silently: the NaN of the original report), and tolerate a damaged
or missing `_CHECKPOINT_METADATA`, `_sharding` or `_METADATA`. `restore` adds: every JSON file
orbax wrote must parse, every array must match its checksum, every floating array be finite.

Callers: `save` (raises NonFiniteStateError for a non-finite state), `restore` (falls back to the
newest intact checkpoint, or raises CheckpointIntegrityError), and `close(manager)` in a `finally`
block, or `with managed(workdir) as manager:`.
"""

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from diffax import checksums, config_checks

STATE = "state"
CONFIG = "config"
INTEGRITY = "integrity"
_MARKER = "diffax_integrity"  # In _CHECKPOINT_METADATA's custom_metadata: a record was written.
# JSON files orbax writes in a step folder (state, config, integrity items); all must parse.
_JSON_FILES = ("_CHECKPOINT_METADATA", "*/_METADATA", "*/_sharding", "*/metadata")
_ELSEWHERE = "another process found it damaged"


class CheckpointIntegrityError(ValueError):
    """No checkpoint passed verification; the message names the folder, each step and why."""

    def __init__(self, directory: str, failures: dict[int, str]):
        self.directory, self.failures = directory, dict(failures)
        listed = "; ".join(f"step {s}: {why}" for s, why in failures.items())
        super().__init__(
            f"No checkpoint in {directory} passed verification ({listed}); they are left on disk "
            "untouched: move them aside to start afresh, or restore them from a backup."
        )


class NonFiniteStateError(FloatingPointError):
    """`save` refused a state holding NaN or infinity; nothing was written."""


class DiskFullError(OSError):
    """A save ran out of disk space; its partial folder was removed, complete checkpoints kept."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ENOSPC


@dataclasses.dataclass
class Ledger:
    """What this process learnt about the steps on disk; rotation and `save` consult it."""

    good: set[int] = dataclasses.field(default_factory=set)  # Verified, or saved finite here.
    failed: dict[int, str] = dataclasses.field(default_factory=dict)  # Step -> why it failed.
    last_prints: dict[str, checksums.ArrayPrint] | None = None  # State last restored or saved.
    saving: int | None = None  # The step of the last save begun (async: maybe still running).


class VerifiedCheckpointManager(ocp.CheckpointManager):
    """An orbax CheckpointManager carrying the Ledger that `save`, `restore` and rotation share."""

    def __init__(
        self,
        directory: epath.Path,
        *,
        options: ocp.CheckpointManagerOptions,
        ledger: Ledger,
        **kwargs: Any,
    ):
        super().__init__(directory, options=options, **kwargs)
        self.ledger = ledger
        # The name of the barrier orbax's Checkpointer.restore ends with (see _orbax_restore);
        # AsyncCheckpointer turns a prefix of None into "", the plain Checkpointer does not.
        prefix = options.multiprocessing_options.barrier_sync_key_prefix
        if options.enable_async_checkpointing and prefix is None:
            prefix = ""
        self.restore_barrier = (
            "Checkpointer:restore" if prefix is None else f"{prefix}_Checkpointer:restore"
        )


# Paths and names.


def checkpoint_dir(workdir: str) -> epath.Path:
    """Returns the folder under the workdir that holds the numbered checkpoints (absolute)."""
    if "://" not in str(workdir):  # Orbax needs absolute paths; gs:// and the like already are.
        workdir = os.path.abspath(workdir)
    return epath.Path(workdir) / "checkpoints"


def _listed(names: Sequence[str], limit: int = 3) -> str:
    """Returns 'a, b, c and 4 more' for a list of array names."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _describe(error: BaseException) -> str:
    """Returns one line naming an error's innermost cause (where tensorstore names the file)."""
    while True:
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None:
            break
        error = inner
    text = " ".join(str(error).split())
    for tail in (" See full TensorStore details", " [tensorstore_spec="):
        text = text.split(tail)[0]
    return f"{type(error).__name__}: {text[:240]}"


# Rotation.


def steps_to_keep(
    steps: Sequence[int], max_to_keep: int | None, good: set[int], failed: set[int]
) -> set[int]:
    """Returns the steps rotation keeps: failed ones, the newest good one, the newest N others.

    N is `max_to_keep` (None: all) and counts only steps that did not fail verification; failed
    steps stay for the user to inspect; the newest good step stays whatever `max_to_keep` says.
    """
    kept = {s for s in steps if s in failed}
    others = sorted(s for s in steps if s not in failed)
    if max_to_keep is None:
        kept.update(others)
    elif max_to_keep > 0:
        kept.update(others[-max_to_keep:])
    newest_good = max((s for s in others if s in good), default=None)
    if newest_good is not None:
        kept.add(newest_good)
    return kept


@dataclasses.dataclass
class KeepVerified(ocp.checkpoint_managers.PreservationPolicy):
    """Orbax preservation policy applying `steps_to_keep` with a manager's Ledger."""

    max_to_keep: int | None
    ledger: Ledger

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any = None) -> Sequence[bool]:
        """Returns, per checkpoint (orbax's PolicyCheckpointInfo), whether to keep it."""
        steps = [c.step for c in checkpoints]
        kept = steps_to_keep(steps, self.max_to_keep, self.ledger.good, set(self.ledger.failed))
        return [s in kept for s in steps]


# The manager.


def create_manager(
    workdir: str,
    max_to_keep: int | None = 3,
    async_save: bool = True,
    read_only: bool = False,
    partial: bool = False,
) -> VerifiedCheckpointManager:
    """Returns a manager keeping the newest `max_to_keep` steps (see steps_to_keep); async saves.

    `partial` (read-only managers) lets `restore(..., partial=True)` read a part of the state,
    such as the EMA parameters alone, without the optimizer moments. Call `close(manager)` in a
    `finally` block (or use `managed`) so an in-flight save finishes.
    """
    if partial and not read_only:
        raise ValueError("A partial-restore manager must be read-only.")
    ledger = Ledger()
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=async_save,
        create=not read_only,
        read_only=read_only,
        # Rotation runs inside orbax's save: it picks the steps then and deletes them only
        # after the new checkpoint has committed.
        preservation_policy=None if read_only else KeepVerified(max_to_keep, ledger),
        cleanup_tmp_directories=not read_only,  # Unfinished saves of an earlier run.
    )
    handlers = {
        # The same files either way; orbax restores a part only through the PyTree handler.
        STATE: ocp.PyTreeCheckpointHandler() if partial else ocp.StandardCheckpointHandler(),
        CONFIG: ocp.JsonCheckpointHandler(),
        INTEGRITY: ocp.JsonCheckpointHandler(),
    }
    return VerifiedCheckpointManager(
        checkpoint_dir(workdir), ledger=ledger, options=options, item_handlers=handlers
    )


def _is_disk_full(error: BaseException) -> bool:
    """Returns whether an error, or one it came from, is ENOSPC (tensorstore says it in text)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        text = str(error)
        if "No space left on device" in text or "os_error_code='28'" in text:
            return True
        error = error.__cause__ or error.__context__
    return False


def _complete_steps(directory: epath.Path) -> list[int]:
    """Returns the steps with a committed checkpoint folder (orbax renames it from tmp last)."""
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def _raise_if_disk_full(manager: ocp.CheckpointManager, error: BaseException) -> None:
    """Raises DiskFullError (one sentence) if `error` is a full disk, after removing the partial
    `*.orbax-checkpoint-tmp*` folders; returns for any other error.

    Only unfinished saves have such folders, and the workdir's lock (diffax.workdir_lock) makes
    them this run's own or a dead run's, which orbax would delete at the next start anyway.
    """
    if not _is_disk_full(error):
        return
    ledger, directory = _ledger(manager), epath.Path(manager.directory)
    step = ledger.saving
    ledger.good.discard(step)
    # The save's other writer threads may still be finishing a file when the first error
    # arrives (seen under load): remove until nothing partial is left, for up to two seconds.
    for _ in range(20):
        partials = list(directory.glob("*.orbax-checkpoint-tmp*"))
        if not partials:
            break
        for partial in partials:
            shutil.rmtree(partial, ignore_errors=True)
        time.sleep(0.1)
    kept = _complete_steps(directory) if directory.exists() else []
    listed = f"step{'s' * (len(kept) > 1)} {', '.join(map(str, kept))}" if kept else "none"
    raise DiskFullError(
        f"The disk holding {directory} is full (No space left on device): the checkpoint of "
        f"step {step} could not be written and its partial folder was removed; complete "
        f"checkpoints kept: {listed}. Free space or move the workdir, then rerun to resume."
    ) from None


def wait(manager: ocp.CheckpointManager) -> None:
    """Waits for the save in flight; raises DiskFullError (one sentence) if the disk filled."""
    try:
        manager.wait_until_finished()
    except Exception as error:
        _raise_if_disk_full(manager, error)
        raise


def close(manager: ocp.CheckpointManager) -> bool:
    """Waits for an in-flight save, then closes the manager; returns False (logged) if it failed.

    Never raises an ordinary exception, so it belongs in a `finally` block on every exit path; a
    save that did not finish leaves only orbax's temporary folder, which restore never reads and
    the next writable manager deletes.
    """
    errors = []
    for action in (manager.wait_until_finished, manager.close):  # close() waits again.
        try:
            action()
        except Exception as error:  # noqa: BLE001 - reported, and the older steps are intact.
            errors.append(error)
    if errors:
        logging.error(
            "A checkpoint save in %s did not finish (%s); older checkpoints are intact.",
            manager.directory,
            _describe(errors[0]),
        )
    return not errors


@contextlib.contextmanager
def managed(workdir: str, **kwargs: Any) -> Iterator[VerifiedCheckpointManager]:
    """Yields create_manager(workdir, **kwargs) and closes it (waiting for saves) on any exit."""
    manager = create_manager(workdir, **kwargs)
    try:
        yield manager
    finally:
        close(manager)


def _ledger(manager: ocp.CheckpointManager) -> Ledger:
    """Returns the manager's Ledger (a fresh one for a plain orbax manager: nothing protected)."""
    ledger = getattr(manager, "ledger", None)
    return ledger if isinstance(ledger, Ledger) else Ledger()


# Saving.


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    config: ml_collections.ConfigDict,
    force: bool = True,
) -> bool:
    """Checksums `state` now, then starts saving it with its config and checksums (async).

    Returns whether a save began: False, logged, when the state is unchanged since it was last
    restored or saved, or when `step` holds a checkpoint that failed verification (it is never
    overwritten). Raises NonFiniteStateError, writing nothing, if any floating array holds NaN
    or infinity. The checksums are computed before returning, so the caller may donate `state`.
    """
    prints = checksums.fingerprint(state)
    non_finite = [n for n, p in prints.items() if not p.finite]
    if non_finite:
        raise NonFiniteStateError(
            f"Refusing to save step {step}: non-finite values in {_listed(non_finite)}; the "
            f"checkpoints in {manager.directory} are left as they are."
        )
    ledger = _ledger(manager)
    if step in ledger.failed:
        logging.warning(
            "Not saving step %d: %s holds a checkpoint that failed verification (%s); move it "
            "aside to checkpoint this step.",
            step,
            manager.directory / str(step),
            ledger.failed[step],
        )
        return False
    if prints == ledger.last_prints:
        logging.info(
            "Not saving step %d: the state is unchanged since the last restore or save.", step
        )
        return False
    config_dict = json.loads(config.to_json_best_effort())
    args = ocp.args.Composite(
        **{
            STATE: ocp.args.StandardSave(state),
            CONFIG: ocp.args.JsonSave(config_dict),
            INTEGRITY: ocp.args.JsonSave(checksums.record(prints)),
        }
    )
    ledger.good.add(step)  # Before orbax's save, which runs the rotation policy.
    try:
        # Orbax waits here for the previous save: its error (a full disk) surfaces here too.
        started = manager.save(
            step, args=args, force=force, custom_metadata={_MARKER: checksums.INTEGRITY_VERSION}
        )
    except BaseException as error:
        ledger.good.discard(step)
        if isinstance(error, Exception):
            if ledger.saving is None or ledger.saving in _complete_steps(manager.directory):
                ledger.saving = step  # Not the previous save's error: this step's own.
            _raise_if_disk_full(manager, error)
        raise
    if started:
        ledger.saving = step
        ledger.last_prints = prints
    else:
        ledger.good.discard(step)
    return started


# Shapes.


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
    """Returns {path: shape} for every leaf of a pytree of arrays or array metadata."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, dict)
    )
    return {
        checksums.path_name(p): tuple(leaf.shape) for p, leaf in leaves if hasattr(leaf, "shape")
    }


def _raise_if_mismatched(
    saved: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], directory: str
) -> None:
    """Raises ValueError naming every array whose saved shape differs from the config's."""
    mismatched = [
        f"{k}: checkpoint {saved.get(k, 'absent')} vs config {expected.get(k, 'absent')}"
        for k in sorted(set(saved) | set(expected))
        if saved.get(k) != expected.get(k)
    ]
    if mismatched:
        shown = "; ".join(mismatched[:10]) + (" ..." if len(mismatched) > 10 else "")
        raise ValueError(
            f"The checkpoint in {directory} does not fit this config ({len(mismatched)} "
            f"mismatched arrays: {shown}); use the config it was trained with or a new workdir."
        )


# Verification and restoring.


def _all_processes(ok: bool) -> bool:
    """Returns whether `ok` holds on every process, so that all take the same branch."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _orbax_restore(
    manager: ocp.CheckpointManager, step: int, items: dict[str, Any]
) -> tuple[Any, str | None]:
    """Returns (manager.restore's items, None) or (None, one line on why orbax raised).

    Orbax's Checkpointer.restore ends in a barrier that a process whose own read raised never
    reaches; such a process joins it here, so processes whose shards read fine are not left
    waiting there, out of step for good (a plain orbax manager does not say its barrier name).
    """
    try:
        return manager.restore(step, args=ocp.args.Composite(**items)), None
    except Exception as error:  # noqa: BLE001 - whatever orbax raises, the checkpoint is damaged.
        barrier = getattr(manager, "restore_barrier", None)
        if jax.process_count() > 1 and barrier is not None:
            ocp.multihost.sync_global_processes(barrier)
        return None, _describe(error)


def _invalid_json(step_dir: epath.Path) -> list[str]:
    """Returns the JSON files orbax wrote in a step folder that no longer parse."""
    bad = []
    patterns = (*_JSON_FILES, f"{STATE}/array_metadatas/*")
    for path in sorted({p for pattern in patterns for p in step_dir.glob(pattern)}):
        try:
            if path.is_file():
                json.loads(path.read_text())
        except (OSError, ValueError):  # ValueError covers JSON and UTF-8 decoding errors.
            bad.append(str(path.relative_to(step_dir)))
    return bad


def _read_record(
    manager: ocp.CheckpointManager, step: int, step_dir: epath.Path
) -> tuple[dict[str, dict[str, Any]] | None, str | None]:
    """Returns (record arrays, None), (None, None) if older than records, or (None, why)."""
    try:
        marked = (manager.metadata(step).custom_metadata or {}).get(_MARKER) is not None
    except Exception:  # noqa: BLE001 - the folder below decides then.
        marked = False
    if not marked and not (step_dir / INTEGRITY).exists():
        return None, None
    raw, error = _orbax_restore(manager, step, {INTEGRITY: ocp.args.JsonRestore()})
    if error is not None:
        return None, f"its checksum record cannot be read ({error})"
    try:
        return checksums.parse_record(raw[INTEGRITY]), None
    except ValueError as error:
        return None, str(error)


def _saved_shapes(
    manager: ocp.CheckpointManager, step: int, record: dict[str, dict[str, Any]] | None
) -> tuple[dict[str, tuple[int, ...]] | None, str | None]:
    """Returns (the shapes saved at `step`, None) or (None, why they cannot be trusted)."""
    try:
        metadata = manager.item_metadata(step)[STATE]
        meta = None if metadata is None else _shapes_by_path(getattr(metadata, "tree", metadata))
        meta_error = None if meta else "state/_METADATA is missing"
    except Exception as error:  # noqa: BLE001 - unreadable metadata is damage.
        meta, meta_error = None, f"orbax cannot read its metadata ({_describe(error)})"
    if record is None:
        return meta, meta_error
    shapes = {n: tuple(a["shape"]) for n, a in record.items()}
    if meta and meta != shapes:  # A damaged file can still parse; the record has its own digest.
        differing = sorted(k for k in set(meta) | set(shapes) if meta.get(k) != shapes.get(k))
        return None, f"state/_METADATA and the checksum record disagree on {_listed(differing)}"
    return shapes, None


def _with_dtypes(abstract_state: Any, dtypes: dict[str, str]) -> Any:
    """Returns abstract_state with each leaf's dtype replaced by the one it was saved in."""

    def leaf(path: Any, a: Any) -> jax.ShapeDtypeStruct:
        saved = dtypes.get(checksums.path_name(path), str(a.dtype))
        try:
            dtype = jnp.dtype(saved) if saved != str(a.dtype) else a.dtype
        except TypeError:
            dtype = a.dtype
        return jax.ShapeDtypeStruct(a.shape, dtype, sharding=getattr(a, "sharding", None))

    return jax.tree_util.tree_map_with_path(leaf, abstract_state)


def _restore_item(target: Any, partial: bool) -> Any:
    """Returns orbax's restore argument for the state: all of it, or the part `target` names."""
    if not partial:
        return ocp.args.StandardRestore(target)
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    return ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True)


def _verified_restore(
    manager: ocp.CheckpointManager, step: int, abstract_state: Any, partial: bool = False
) -> tuple[Any, dict[str, checksums.ArrayPrint] | None, str | None]:
    """Returns (state, its prints, None) if checkpoint `step` passes every check, else why not.

    With `partial`, abstract_state names a part of the saved state (a dict of some of its
    fields), and only that part is read and checked. Raises the shape-mismatch ValueError for an
    intact checkpoint of another config. Every process must call it; all reach the same verdict.
    """
    step_dir = epath.Path(manager.directory) / str(step)
    bad_json = _invalid_json(step_dir)
    why = f"{_listed(bad_json)} {'is' if len(bad_json) == 1 else 'are'} not valid JSON"
    # Agree before each orbax read: orbax's reads end in barriers every process must reach.
    if not _all_processes(not bad_json):
        return None, None, why if bad_json else _ELSEWHERE
    record, why = _read_record(manager, step, step_dir)
    shapes = None
    if why is None:
        shapes, why = _saved_shapes(manager, step, record)
    if not _all_processes(why is None):
        return None, None, why or _ELSEWHERE
    expected = _shapes_by_path(abstract_state)
    if partial:
        shapes = {name: shape for name, shape in shapes.items() if name in expected}
        record = None if record is None else {n: a for n, a in record.items() if n in expected}
    _raise_if_mismatched(shapes, expected, str(manager.directory))
    dtypes = {n: a["dtype"] for n, a in (record or {}).items()}
    target = _with_dtypes(abstract_state, dtypes)
    items, error = _orbax_restore(manager, step, {STATE: _restore_item(target, partial)})
    why = None if error is None else f"orbax could not read it ({error})"
    if not _all_processes(why is None):
        return None, None, why or _ELSEWHERE
    restored = items[STATE]
    prints = checksums.fingerprint(restored)
    non_finite = [n for n, p in prints.items() if not p.finite]
    problems = [f"non-finite values in {_listed(non_finite)}"] if non_finite else []
    if record is not None:
        wrong = [
            n
            for n in sorted(set(record) | set(prints))
            if n not in record or n not in prints or record[n]["digest"] != prints[n].digest
        ]
        problems += [f"checksum mismatch in {_listed(wrong)}"] if wrong else []
    if problems:
        return None, None, "; ".join(problems)
    if record is None:
        logging.warning(
            "Checkpoint %d has no checksum record (written before diffax kept one); accepted "
            "unverified because every array is finite.",
            step,
        )
    return restored, prints, None


def _cast_to(state: Any, abstract_state: Any) -> tuple[Any, bool]:
    """Returns (state with leaves cast to the abstract dtypes, whether any leaf was cast)."""
    pairs = zip(jax.tree.leaves(state), jax.tree.leaves(abstract_state), strict=True)
    if all(x.dtype == a.dtype for x, a in pairs):
        return state, False
    return jax.tree.map(lambda x, a: x.astype(a.dtype), state, abstract_state), True


def restore(
    manager: ocp.CheckpointManager,
    abstract_state: Any,
    step: int | None = None,
    partial: bool = False,
) -> tuple[Any, int] | None:
    """Returns (state, step) of the newest checkpoint that passes verification; None if none exist.

    Restores into abstract_state (shapes, dtypes, shardings); with `step`, that step only. A
    checkpoint fails verification if orbax cannot read it, a JSON file in it does not parse, its
    checksum record is damaged, an array differs from its checksum, or a floating array is not
    finite; one without a record (written before records) passes, with a warning, if finite.
    Each failed step is logged on one line and left on disk untouched, and the next older one is
    tried; a fallback is logged as "Checkpoint 120 failed verification (...); resumed from step
    110, the newest intact checkpoint." Raises CheckpointIntegrityError if none passes (or
    `step` fails), and the "does not fit this config" ValueError at once, without falling back,
    for an intact checkpoint of other shapes. With `partial` (a manager made with
    `partial=True`), abstract_state is a dict of some of the state's fields, e.g. {"ema_params":
    ...}, and only those arrays are read and verified. Every process must call it.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    if step is not None and step not in steps:
        raise FileNotFoundError(f"No checkpoint at step {step} in {manager.directory}.")
    steps = steps if step is None else [step]
    if not steps:
        return None
    ledger = _ledger(manager)
    failures: dict[int, str] = {}
    for candidate in steps:
        state, prints, why = _verified_restore(manager, candidate, abstract_state, partial)
        if why is None:
            break
        failures[candidate] = ledger.failed[candidate] = why
        logging.error(
            "Checkpoint %d failed verification: %s; left on disk untouched in %s.",
            candidate,
            why,
            epath.Path(manager.directory) / str(candidate),
        )
    else:
        raise CheckpointIntegrityError(str(manager.directory), failures)
    state, was_cast = _cast_to(state, abstract_state)
    ledger.good.add(candidate)
    ledger.last_prints = None if was_cast else prints
    if failures:
        listed = ", ".join(str(s) for s in failures)
        reasons = "; ".join(f"{s}: {why}" for s, why in failures.items())
        reasons = reasons if len(failures) > 1 else failures[steps[0]]
        logging.warning(
            "Checkpoint%s %s failed verification (%s); resumed from step %d, the newest intact "
            "checkpoint.",
            "s" if len(failures) > 1 else "",
            listed,
            reasons,
            candidate,
        )
    return state, candidate


def saved_config(manager: ocp.CheckpointManager) -> dict | None:
    """Returns the config saved with the newest checkpoint as a plain dict, or None if none (one
    written before config.model was split by part comes back split)."""
    step = manager.latest_step()
    if step is None:
        return None
    restored = manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))
    return config_checks.upgrade_model_section(restored[CONFIG])
