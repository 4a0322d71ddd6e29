"""Model kinds, one module each; `get(config)` is the one place a config's kind is decided.

Every other module asks the task (`tasks.get(config).train_step(...)`, `.evaluators(config)`,
`.draws_samples`) or calls the functions below, which do. A new kind of model is one module here
with a `TASK` (a `base.Task`), one entry in `TASKS` and, if it needs one, its backbone.
"""

import functools
from typing import Any

import jax
import ml_collections
import optax

from diffax import sharding
from diffax import timestep_sampler as timestep_sampler_lib
from diffax.tasks import autoencoder, base, classifier, continuous, denoiser
from diffax.train_state import TrainState

TASKS: dict[str, base.Task] = {
    task.name: task for task in (denoiser.TASK, continuous.TASK, classifier.TASK, autoencoder.TASK)
}


def kind(config: ml_collections.ConfigDict) -> str:
    """Returns the name of the config's task: the one that claims model.name (the classifier,
    the autoencoder), else a denoiser by diffusion.kind (discrete chain or continuous time)."""
    for task in TASKS.values():
        if config.model.name in task.model_names:
            return task.name
    if config.diffusion.kind == "continuous":
        return continuous.TASK.name
    return denoiser.TASK.name


def get(config: ml_collections.ConfigDict) -> base.Task:
    """Returns the config's task."""
    return TASKS[kind(config)]


def is_classifier(config: ml_collections.ConfigDict) -> bool:
    """Returns whether the config trains a noisy classifier (guidance's, for restoring one)."""
    return kind(config) == classifier.TASK.name


def is_autoencoder(config: ml_collections.ConfigDict) -> bool:
    """Returns whether the config trains an autoencoder (latent diffusion's first stage)."""
    return kind(config) == autoencoder.TASK.name


def create_process(config: ml_collections.ConfigDict) -> Any:
    """Returns the process the config's model is trained on (discrete or continuous)."""
    return get(config).create_process(config)


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Returns the config's optimizer (AdamW; one per half for an autoencoder GAN)."""
    return get(config).create_optimizer(config)


def init_params(rng: jax.Array, model: Any, config: ml_collections.ConfigDict) -> Any:
    """Returns freshly initialised parameters of the config's kind (pure)."""
    return get(config).init_params(rng, model, config)


def make_train_step(
    config: ml_collections.ConfigDict,
    model: Any,
    process: Any,
    mesh: jax.sharding.Mesh | None = None,
) -> base.TrainStep:
    """Returns the config's pure step(state, batch) -> (state, metrics)."""
    return get(config).train_step(config, model, process, mesh)


def eval_params(state: TrainState, config: ml_collections.ConfigDict) -> Any:
    """Returns the parameters eval and sampling use: the first EMA, or the raw ones (of an
    autoencoder GAN, the autoencoder's alone)."""
    return get(config).eval_params(state, config)


def init_state(
    rng: jax.Array,
    *,
    model: Any,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
) -> TrainState:
    """Returns a fresh train state (pure; jit it with out_shardings to allocate it sharded)."""
    param_rng, state_rng = jax.random.split(rng)
    return state_from_params(init_params(param_rng, model, config), state_rng, tx=tx, config=config)


def state_from_params(
    params: Any,
    rng: jax.Array,
    *,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
) -> TrainState:
    """Returns the step-0 train state holding `params` (every EMA a copy of them, a fresh
    optimizer state): a fresh run's, or imported weights' (pure)."""
    return TrainState.create(
        params=params,
        tx=tx,
        ema_rates=tuple(config.training.ema_rates),
        ema_warmup=config.training.ema_warmup,
        rng=rng,
        sampler_state=timestep_sampler_lib.loss_second_moment_init(config.diffusion.num_timesteps),
    )


def abstract_state(
    config: ml_collections.ConfigDict,
    model: Any,
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
) -> tuple[TrainState, Any]:
    """Returns (the state's ShapeDtypeStructs carrying their shardings, the shardings).

    Nothing is allocated: this is what `jax.jit(init, out_shardings=...)` creates and what a
    checkpoint restores into.
    """
    init = functools.partial(init_state, model=model, tx=tx, config=config)
    shapes = jax.eval_shape(init, jax.random.PRNGKey(config.seed))
    shardings = sharding.state_shardings(mesh, shapes)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings
    )
    return abstract, shardings
