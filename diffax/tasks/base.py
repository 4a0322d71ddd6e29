"""What every model kind answers: its process, parameters, optimizer, train step and evaluators.

A kind of model (the denoiser, the continuous-time denoiser, the noisy classifier, the
autoencoder) is one module in `diffax/tasks/` holding one `Task`; `diffax.tasks.get(config)` is
the one place that decides which. The loop (`diffax.train`) and evaluation (`diffax.evaluate`)
ask the task, never the config's model name.
"""

import abc
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from diffax import build, config_checks

# fn(state, batch) -> (state, metrics): pure, jitted by the loop with donated state.
TrainStep = Callable[[Any, dict[str, jax.Array]], tuple[Any, dict[str, jax.Array]]]


def drop_labels(labels: jax.Array, key: jax.Array, rate: float, num_classes: int) -> jax.Array:
    """Returns labels [B] with each replaced by the null class num_classes with chance `rate`
    (classifier-free guidance's label dropout, Ho & Salimans 2021)."""
    drop = jax.random.uniform(key, labels.shape) < rate
    return jnp.where(drop, num_classes, labels)


class Task(abc.ABC):
    """One model kind. Subclasses set the class fields and override what differs."""

    name: str = ""
    # config.model.name values that make a config this kind (empty: a denoiser, by its process).
    model_names: tuple[str, ...] = ()
    # The evaluators (diffax.evaluators) this kind can run, and whether it draws samples
    # (training's sample grids, --mode=sample).
    evaluator_names: tuple[str, ...] = ()
    draws_samples: bool = False

    def create_process(self, config: ml_collections.ConfigDict) -> Any:
        """Returns the noising process the model is trained on (the discrete one by default)."""
        return build.discrete_process(config)

    @abc.abstractmethod
    def init_params(self, rng: jax.Array, model: Any, config: ml_collections.ConfigDict) -> Any:
        """Returns freshly initialised parameters (pure; jax.eval_shape gives their shapes)."""

    def create_optimizer(self, config: ml_collections.ConfigDict) -> optax.GradientTransformation:
        """Returns the optimizer of config.training (AdamW with warm-up and clipping)."""
        return build.create_optimizer(config)

    @abc.abstractmethod
    def train_step(
        self,
        config: ml_collections.ConfigDict,
        model: Any,
        process: Any,
        mesh: jax.sharding.Mesh | None = None,
    ) -> TrainStep:
        """Returns the pure step(state, batch) -> (state, metrics) of this kind."""

    def eval_params(self, state: Any, config: ml_collections.ConfigDict) -> Any:
        """Returns the parameters evaluation and sampling use: the first EMA, or the raw ones."""
        if config.eval.use_ema and state.ema_params:
            return state.ema_params[0]
        return state.params

    def default_evaluators(self, config: ml_collections.ConfigDict) -> tuple[str, ...]:
        """Returns the evaluators a config of this kind runs when eval.evaluators is empty."""
        return self.evaluator_names

    def evaluators(self, config: ml_collections.ConfigDict) -> tuple[str, ...]:
        """Returns the evaluators to run: eval.evaluators when given, else the kind's defaults."""
        return tuple(config.eval.get("evaluators", ())) or self.default_evaluators(config)

    def check(self, config: ml_collections.ConfigDict) -> None:
        """Raises ConfigError in one sentence when the config does not suit this kind.

        Subclasses add their own checks and call this one.
        """
        chosen = config.eval.get("evaluators", ())
        if not isinstance(chosen, (tuple, list)) or not all(isinstance(n, str) for n in chosen):
            raise config_checks.ConfigError(
                f"eval.evaluators={chosen!r} must be a tuple of evaluator names (empty: the "
                f"kind's defaults, {', '.join(self.default_evaluators(config))})."
            )
        unknown = [name for name in chosen if name not in self.evaluator_names]
        if unknown:
            raise config_checks.ConfigError(
                f"eval.evaluators={tuple(chosen)!r}: {', '.join(map(repr, unknown))} cannot run "
                f"on a {self.name} model; choose from {', '.join(self.evaluator_names)}."
            )
        training = config.training
        if self.name != "autoencoder":
            for field in ("disc_weight", "perceptual_weight"):
                if training[field] > 0:
                    raise config_checks.ConfigError(
                        f"training.{field}={training[field]} is an autoencoder's loss term, but "
                        f"model.name={config.model.name!r} is a {self.name}: set it 0."
                    )
