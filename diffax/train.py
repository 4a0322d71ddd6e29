"""The training loop: one for every kind of model; the step, state and evaluators come from the
config's task (`diffax.tasks`)."""

import functools
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from diffax import (
    build,
    checkpointing,
    compilation_cache,
    distributed,
    evaluate,
    generate,
    input_pipeline,
    latent_cache,
    latents,
    models,
    preemption,
    sharding,
    summaries,
    tasks,
)
from diffax.train_state import TrainState


class Trainer:
    """Builds the model, process, mesh, sharded state and jitted step of a config's task, once;
    and for latent diffusion the frozen autoencoder (`latent`, else None)."""

    def __init__(self, config: ml_collections.ConfigDict, devices=None):
        self.config = config
        self.task = tasks.get(config)
        self.mesh = sharding.create_mesh(config.mesh.data, config.mesh.fsdp, devices)
        self.latent = latents.load(config, self.mesh) if build.is_latent(config) else None
        self.model = build.create_model(config)
        self.process = self.task.create_process(config)
        self.tx = self.task.create_optimizer(config)
        self._init = functools.partial(
            tasks.init_state, model=self.model, tx=self.tx, config=config
        )
        self.rng = jax.random.PRNGKey(config.seed)
        self.abstract_state, self.state_shardings = tasks.abstract_state(
            config, self.model, self.tx, self.mesh
        )
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        step = self.task.train_step(config, self.model, self.process, self.mesh)
        self.train_step = jax.jit(
            step,
            in_shardings=(self.state_shardings, self.batch_sharding),
            out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
            donate_argnums=(0,),
        )

    def init(self) -> TrainState:
        """Returns a fresh state, allocated directly with its shardings."""
        return jax.jit(self._init, out_shardings=self.state_shardings)(self.rng)

    def abstract_batch(self, global_batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Returns the shape of a global training batch, for compiling ahead of the data."""
        spec = lambda shape, dtype: jax.ShapeDtypeStruct(  # noqa: E731
            (global_batch_size, *shape), dtype, sharding=self.batch_sharding
        )
        batch = {
            "image": spec(build.image_shape(self.config), jnp.float32),
            "label": spec((), jnp.int32),
        }
        length = self.config.data.get("text_length", 0)
        if build.has_stored_embeddings(self.config):
            batch["context"] = spec((length, self.config.model.text.width), jnp.float32)
            batch["context_mask"] = spec((length,), jnp.bool_)
        elif length:
            batch["tokens"] = spec((length,), jnp.int32)
        return batch

    def compile(self, global_batch_size: int) -> Callable:
        """Lowers and compiles the train step on abstract inputs; shape errors show here."""
        start, before = time.time(), compilation_cache.counts()
        compiled = self.train_step.lower(
            self.abstract_state, self.abstract_batch(global_batch_size)
        ).compile()
        after = compilation_cache.counts()
        logging.info(
            "Compiled the train step in %.1f s (persistent cache: %d hits, %d misses).",
            time.time() - start,
            after["hits"] - before["hits"],
            after["misses"] - before["misses"],
        )
        return compiled


def _progress(total: int, initial: int):
    """Returns a tqdm bar on a terminal, else None."""
    if not sys.stderr.isatty() or jax.process_index() != 0:
        return None
    import tqdm

    return tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (resuming from the workdir's newest checkpoint), then evaluates; returns eval.

    SIGTERM or Ctrl-C gives Preempted at any moment: saved at the next step while training, at
    once (the checkpoints intact) while compiling or evaluating.
    """
    with preemption.PreemptionGuard() as guard:
        trainer, state, writer = train(config, workdir, guard=guard)
        return evaluate.evaluate_params(
            config,
            workdir,
            model=trainer.model,
            process=trainer.process,
            mesh=trainer.mesh,
            params=trainer.task.eval_params(state, config),
            step=int(jax.device_get(state.step)),
            writer=writer,
            latent=trainer.latent,
        )


@functools.partial(jax.jit, donate_argnums=(0,))
def _first_step_at_limit(first: jax.Array, consecutive: jax.Array, step: int, limit: int):
    """Returns the first step whose run of non-finite updates reached the limit (0: none yet)."""
    return jnp.where((first == 0) & (consecutive >= limit), step, first)


def _check_skips(first_at_limit: jax.Array, limit: int) -> None:
    """Raises FloatingPointError if a run of `limit` non-finite updates happened (a host sync)."""
    step = int(jax.device_get(first_at_limit))
    if step:
        raise FloatingPointError(
            f"{limit} consecutive non-finite updates at step {step} "
            f"(training.max_consecutive_skips={limit}); lower training.learning_rate or check "
            "the data. No checkpoint was written after them."
        )


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    devices=None,
    guard: preemption.PreemptionGuard | None = None,
):
    """Trains to training.num_steps, resuming from the newest checkpoint.

    The config is taken as checked: `diffax.main` runs `validation.validate_config` once, before
    anything is built or written. Returns (trainer, final state, TensorBoard writer or None);
    raises Preempted on SIGTERM or Ctrl-C and FloatingPointError after
    training.max_consecutive_skips non-finite updates in a row. Every exit waits for the
    checkpoint being written, so none is left half-saved.
    """
    if guard is None:
        with preemption.PreemptionGuard() as own_guard:
            return train(config, workdir, devices, own_guard)
    trainer = Trainer(config, devices)
    manager = checkpointing.create_manager(workdir, max_to_keep=config.training.keep_checkpoints)
    try:
        return _train_loop(config, workdir, trainer, manager, guard)
    finally:
        checkpointing.close(manager)  # Finishes (or cleanly abandons) a save in flight.


def _train_loop(config, workdir, trainer, manager, guard):
    """The loop of `train`, between restoring and the last checkpoint."""
    training = config.training
    restored = checkpointing.restore(manager, trainer.abstract_state)
    if restored is None:
        state, start_step = trainer.init(), 0
        logging.info("Initialised a new model in %s.", workdir)
    else:
        state, start_step = restored
        logging.info("Resumed from step %d in %s.", start_step, workdir)
    logging.info("Model parameters: %d", models.count_params(state.params))
    # The data first: a missing data set or a bad image stops the run before compiling.
    local_batch = sharding.per_process_batch_size(training.batch_size)
    if trainer.latent is None:
        train_iter = input_pipeline.create_train_iterator(
            config.data, local_batch, seed=config.seed, start_batch=start_step
        )
    else:  # Encoded once into the cache; never the encoder per step.
        cached = latent_cache.build_or_load(
            trainer.latent,
            config.data.train_split,
            latent_cache.cache_dir(config, workdir),
            config.eval.batch_size,
            flip=config.data.random_flip,
        )
        train_iter = latent_cache.train_iterator(
            cached,
            local_batch,
            trainer.latent.scale,
            seed=config.seed,
            start_batch=start_step,
            text_length=config.data.get("text_length", 0),
            shift=trainer.latent.shift,
            fixed_captions=config.data.get("fixed_captions", False),
        )
    step_fn = trainer.compile(training.batch_size)
    distributed.barrier("diffax_train_step_compiled")
    writer = summaries.create_writer(workdir)
    grid_size = min(config.eval.num_samples, 100)  # Grids during training: 100 at most.
    generator = None
    if training.sample_every and trainer.task.draws_samples:
        generator = generate.Generator(
            config, trainer.model, trainer.process, trainer.mesh, num_samples=grid_size
        )
    bar = _progress(training.num_steps, start_step)
    first_at_limit = jnp.zeros((), jnp.int32)
    last_time, last_step = time.time(), start_step
    with guard.deferred():
        for step in range(start_step, training.num_steps):
            batch = sharding.global_batch(next(train_iter), trainer.mesh)
            state, metrics = step_fn(state, batch)
            done = step + 1
            # Tracked on device every step (no sync), checked at logs and before each save.
            first_at_limit = _first_step_at_limit(
                first_at_limit, metrics["consecutive_skips"], done, training.max_consecutive_skips
            )
            if bar is not None:
                bar.update(1)
            if done % training.log_every == 0 or done == training.num_steps:
                _check_skips(first_at_limit, training.max_consecutive_skips)
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.time()
                metrics["steps_per_sec"] = (done - last_step) / (now - last_time)
                metrics["images_per_sec"] = metrics["steps_per_sec"] * training.batch_size
                last_time, last_step = now, done
                summaries.write_scalars(writer, done, {f"train/{k}": v for k, v in metrics.items()})
                shown = ("loss", "mse", "vb", "accuracy", "rec", "kl", "p_loss", "g_loss", "d_loss")
                shown = [k for k in shown if k in metrics]
                logging.log_if(
                    logging.INFO,
                    "step %d: %s | %.1f steps/s %.0f images/s",
                    jax.process_index() == 0,
                    done,
                    " ".join(f"{k} {metrics[k]:.4f}" for k in shown),
                    metrics["steps_per_sec"],
                    metrics["images_per_sec"],
                )
            stop = guard.should_stop(done)
            if stop or done % training.checkpoint_every == 0 or done == training.num_steps:
                _check_skips(first_at_limit, training.max_consecutive_skips)
                checkpointing.save(manager, done, state, config)
            if stop:
                checkpointing.wait(manager)
                logging.info("Stopping on a signal: saved the checkpoint at step %d.", done)
                raise guard.stopped(done)  # diffax.main says it on the console, in one line.
            if generator is not None and done % training.sample_every == 0:
                evaluate.save_sample_grid(
                    config,
                    workdir,
                    f"samples_{done:08d}",
                    generator,
                    trainer.task.eval_params(state, config),
                    seed=done,
                    num_samples=grid_size,
                    latent=trainer.latent,
                )
                last_time, last_step = time.time(), done  # Keep sampling out of the steps/s.
    if bar is not None:
        bar.close()
    checkpointing.wait(manager)
    if start_step >= training.num_steps:
        logging.info("Training already finished at step %d.", start_step)
    return trainer, state, writer
