"""Orbax checkpoints of the full train state with its config: async save, restore or init."""

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

STATE = "state"
CONFIG = "config"


def checkpoint_dir(workdir: str) -> epath.Path:
    """Returns the folder under the workdir that holds the numbered checkpoints (absolute)."""
    if "://" not in str(workdir):  # Orbax needs absolute paths; gs:// and the like already are.
        workdir = os.path.abspath(workdir)
    return epath.Path(workdir) / "checkpoints"


def create_manager(
    workdir: str, max_to_keep: int = 3, async_save: bool = True, read_only: bool = False
) -> ocp.CheckpointManager:
    """Returns a CheckpointManager keeping the last `max_to_keep` steps; saves are asynchronous."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save,
        create=not read_only,
        read_only=read_only,
    )
    handlers = {STATE: ocp.StandardCheckpointHandler(), CONFIG: ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    config: ml_collections.ConfigDict,
    force: bool = True,
) -> bool:
    """Starts saving the state and config at `step` (async); returns whether a save began."""
    config_dict = json.loads(config.to_json_best_effort())
    return manager.save(
        step,
        args=ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(state), CONFIG: ocp.args.JsonSave(config_dict)}
        ),
        force=force,
    )


def abstract_with_shardings(abstract_tree: Any, shardings: Any) -> Any:
    """Returns ShapeDtypeStructs carrying the target shardings, the form orbax restores into."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings
    )


def _path_name(path: tuple[Any, ...]) -> str:
    """Returns 'a/b/0' for a key path, whatever kind of keys it holds."""
    parts = []
    for key in path:
        for attr in ("name", "key", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
    """Returns {path: shape} for every leaf of a pytree of arrays or array metadata."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, dict)
    )
    return {_path_name(p): tuple(leaf.shape) for p, leaf in leaves if hasattr(leaf, "shape")}


def check_compatible(saved_metadata: Any, abstract_state: Any, directory: str) -> None:
    """Raises ValueError naming every parameter whose saved shape differs from the config's."""
    saved = _shapes_by_path(saved_metadata)
    expected = _shapes_by_path(abstract_state)
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


def restore(
    manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None
) -> tuple[Any, int] | None:
    """Restores the newest complete checkpoint (or `step`) into abstract_state; None if none."""
    step = manager.latest_step() if step is None else step
    if step is None:
        return None
    metadata = manager.item_metadata(step)[STATE]
    check_compatible(getattr(metadata, "tree", metadata), abstract_state, str(manager.directory))
    restored = manager.restore(
        step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract_state)})
    )
    return restored[STATE], step
