"""Parameters for evaluation and sampling from a workdir's newest checkpoint, and its config.

Used by `--mode=eval` and `--mode=sample`, by the guidance classifier and the latent autoencoder
(restored from workdirs of their own) and by the tools.
"""

import json
import os
from typing import Any

import flax.traverse_util
import jax
import ml_collections

from diffax import build, checkpointing, tasks


def restore_eval_params(
    config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh
) -> tuple[Any, int]:
    """Returns (eval parameters, step) of the workdir's newest checkpoint; a clear error if none."""
    model = build.create_model(config)
    require_checkpoints(workdir)
    abstract, _ = tasks.abstract_state(config, model, tasks.create_optimizer(config), mesh)
    # Only the parameters eval uses are read (the EMA, or the raw ones), not the optimizer's
    # moments: with Adam and one EMA, a quarter of the state's bytes.
    field = "ema_params" if config.eval.use_ema and abstract.ema_params else "params"
    manager = checkpointing.create_manager(workdir, read_only=True, partial=True)
    try:
        restored = checkpointing.restore(manager, {field: getattr(abstract, field)}, partial=True)
    finally:
        checkpointing.close(manager)
    if restored is None:
        raise FileNotFoundError(
            f"No checkpoint in {checkpointing.checkpoint_dir(workdir)}: train first with "
            "--mode=train, or point --workdir at a trained run."
        )
    part, step = restored
    return tasks.eval_params(abstract.replace(**part), config), step


def _no_classifier(workdir: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"eval.classifier_workdir={workdir!r} holds no checkpoint: train a noisy classifier "
        "there first (e.g. --config=configs/digits_classifier.py)."
    )


def require_checkpoints(workdir: str, config: ml_collections.ConfigDict | None = None) -> None:
    """Raises FileNotFoundError in one sentence if the guidance classifier's workdir (with a
    config asking for one) or then `workdir` has no checkpoint folder; reads nothing else."""
    if config is not None and config.eval.classifier_scale:
        if not os.path.isdir(checkpointing.checkpoint_dir(config.eval.classifier_workdir)):
            raise _no_classifier(config.eval.classifier_workdir)
    if not os.path.isdir(checkpointing.checkpoint_dir(workdir)):
        raise FileNotFoundError(
            f"No checkpoint in {checkpointing.checkpoint_dir(workdir)}: train first with "
            "--mode=train, or point --workdir at a trained run."
        )


# Config fields that change what a checkpoint's parameters mean: the process they were trained
# for, the network that reads them, the data they model and what conditions it. Eval-only fields
# (sampler, steps, guidance, counts), training-only ones (loss, optimizer) and paths (a moved
# autoencoder workdir is the same autoencoder) are not here.
MEANING_FIELDS = (
    "model",
    "diffusion.kind",
    "diffusion.schedule",
    "diffusion.num_timesteps",
    "diffusion.mean_type",
    "diffusion.var_type",
    "diffusion.gamma_schedule",
    "diffusion.gamma_min",
    "diffusion.gamma_max",
    "diffusion.schedule_hidden",
    "data.image_size",
    "data.num_channels",
    "data.num_levels",
    "data.num_classes",
    "data.text_length",
    "super_resolution.low_res_size",
    "super_resolution.upsample_method",
    "super_resolution.level_cond",
    "inpainting.mask_cond",
    "latent.autoencoder",
    "latent.scale",
    "latent.normalization",
)
# Fields of config.model that change only how the parameters are computed with, not what they are.
_HOW_FIELDS = ("model.dtype", "model.remat")


def _flat(tree: dict) -> dict[str, Any]:
    """Returns {"a.b": value} of a nested dict (lists as tuples, as the config holds them)."""
    flat = flax.traverse_util.flatten_dict(tree, sep=".")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in flat.items()}


def changed_meaning_fields(config: ml_collections.ConfigDict, saved: dict) -> list[str]:
    """Returns "field=given (saved: value)" for each MEANING_FIELDS value the config changes (a
    field the saved config lacks, written by an older diffax, is not compared)."""
    given = _flat(json.loads(config.to_json_best_effort()))
    before = _flat(saved)
    changed = []
    for name in sorted(given):
        covered = any(name == f or name.startswith(f + ".") for f in MEANING_FIELDS)
        if not covered or name in _HOW_FIELDS or name not in before:
            continue
        if given[name] != before[name]:
            changed.append(f"{name}={given[name]!r} (saved: {before[name]!r})")
    return changed


def check_saved_config(
    config: ml_collections.ConfigDict, workdir: str, allow_change: bool = False
) -> None:
    """Raises ValueError in one sentence if the config differs from the one saved with the
    workdir's newest checkpoint on a field that changes what its parameters mean, unless
    allow_change (--allow_config_change) says the difference is intended."""
    saved = workdir_config(workdir)
    if saved is None or allow_change:
        return
    changed = changed_meaning_fields(config, saved)
    if changed:
        shown = "; ".join(changed[:6]) + (
            f"; and {len(changed) - 6} more" if len(changed) > 6 else ""
        )
        raise ValueError(
            f"The config differs from the one saved with the checkpoint in {workdir} on fields "
            f"that change what its parameters mean: {shown}; give the config it was trained "
            "with, or --allow_config_change if the difference is intended."
        )


def workdir_config(workdir: str) -> dict | None:
    """Returns the config saved with a workdir's newest checkpoint (a plain dict), None if none."""
    if not os.path.isdir(checkpointing.checkpoint_dir(workdir)):
        return None
    manager = checkpointing.create_manager(workdir, read_only=True)
    try:
        return checkpointing.saved_config(manager)
    finally:
        checkpointing.close(manager)


def restore_classifier(
    workdir: str, diffusion: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> tuple[Any, Any]:
    """Returns (noisy classifier model, its eval parameters) from `workdir`
    (eval.classifier_workdir).

    The classifier's own config is read from its checkpoint; its diffusion process must be the
    sampled model's, `diffusion` (the guidance is evaluated at the same timesteps).
    """
    saved = workdir_config(workdir)
    if saved is None:
        raise _no_classifier(workdir)
    classifier_config = ml_collections.ConfigDict(saved)
    if not tasks.is_classifier(classifier_config):
        raise ValueError(
            f"eval.classifier_workdir={workdir!r} holds a {classifier_config.model.name!r} "
            "model, not a noisy classifier."
        )
    ours, theirs = diffusion, classifier_config.diffusion
    for field in ("schedule", "num_timesteps"):
        if ours[field] != theirs[field]:
            raise ValueError(
                f"eval.classifier_workdir={workdir!r}: the classifier was trained with "
                f"diffusion.{field}={theirs[field]!r}, this model with {ours[field]!r}."
            )
    params, _ = restore_eval_params(classifier_config, workdir, mesh)
    return build.create_model(classifier_config), params


def guidance_classifier(
    ev: ml_collections.ConfigDict, diffusion: ml_collections.ConfigDict, mesh
) -> tuple[Any, Any] | None:
    """Returns (classifier model, params) when `ev` (config.eval) asks for classifier guidance."""
    if not ev.classifier_scale:
        return None
    return restore_classifier(ev.classifier_workdir, diffusion, mesh)
