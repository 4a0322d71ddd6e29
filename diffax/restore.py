"""Parameters for evaluation and sampling from a workdir's newest checkpoint, and its config.

Used by `--mode=eval` and `--mode=sample`, by the guidance classifier and the latent autoencoder
(restored from workdirs of their own) and by the tools.
"""

import os
from typing import Any

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
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> tuple[Any, Any]:
    """Returns (noisy classifier model, its eval parameters) from eval.classifier_workdir.

    The classifier's own config is read from its checkpoint; its diffusion process must be the
    sampled model's (the guidance is evaluated at the same timesteps).
    """
    workdir = config.eval.classifier_workdir
    saved = workdir_config(workdir)
    if saved is None:
        raise _no_classifier(workdir)
    classifier_config = ml_collections.ConfigDict(saved)
    if not tasks.is_classifier(classifier_config):
        raise ValueError(
            f"eval.classifier_workdir={workdir!r} holds a {classifier_config.model.name!r} "
            "model, not a noisy classifier."
        )
    ours, theirs = config.diffusion, classifier_config.diffusion
    for field in ("schedule", "num_timesteps"):
        if ours[field] != theirs[field]:
            raise ValueError(
                f"eval.classifier_workdir={workdir!r}: the classifier was trained with "
                f"diffusion.{field}={theirs[field]!r}, this model with {ours[field]!r}."
            )
    params, _ = restore_eval_params(classifier_config, workdir, mesh)
    return build.create_model(classifier_config), params


def guidance_classifier(config: ml_collections.ConfigDict, mesh) -> tuple[Any, Any] | None:
    """Returns (classifier model, params) when eval.classifier_scale asks for guidance."""
    return restore_classifier(config, mesh) if config.eval.classifier_scale else None
