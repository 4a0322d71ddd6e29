"""The training loop; train_step is a module-level pure function, sharded where it is called."""

import functools
import sys
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from diffax import (
    build,
    checkpointing,
    classifier,
    diffusion,
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
    validation,
)
from diffax import timestep_sampler as timestep_sampler_lib
from diffax.models import text_encoder
from diffax.train_state import TrainState, step_metrics


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    process: diffusion.GaussianDiffusion,
    num_levels: int,
    label_dropout: float,
    importance_sampling: bool,
    grad_accum_steps: int = 1,
    conditioning_fn: Callable[[jax.Array, jax.Array], dict] | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a global batch {"image": [B, H, W, C], "label": [B]} (and "tokens"
    [B, L] for a text-conditioned model, or "context" [B, L, D] and "context_mask" [B, L] for one
    on stored embeddings); pure.

    label_dropout is the chance a label becomes the null class, or a caption the empty one;
    conditioning_fn(images, key) makes the backbone's further inputs from the batch (see
    build.conditioning_fn; super-resolution's low-resolution copies, inpainting's masks). With a
    data-parallel mesh the gradients are computed per device (sharding.data_parallel).
    """
    images, labels = batch["image"], batch["label"]
    tokens = batch.get("tokens")
    batch_size = images.shape[0]
    # Every random draw derives from (base key, step): a resumed run repeats them exactly.
    key = jax.random.fold_in(state.rng, state.step)
    t_key, noise_key, label_key, dropout_key = jax.random.split(key, 4)
    if importance_sampling:
        t, weights = timestep_sampler_lib.loss_second_moment_sample(
            state.sampler_state, t_key, batch_size
        )
    else:
        t, weights = timestep_sampler_lib.uniform_sample(t_key, batch_size, process.num_timesteps)
    noise = jax.random.normal(noise_key, images.shape, images.dtype)
    num_classes = getattr(model, "num_classes", 0)
    if num_classes:
        drop = jax.random.uniform(label_key, labels.shape) < label_dropout
        labels = jnp.where(drop, num_classes, labels)  # The null class.
    if text_encoder.is_text_conditioned(model):
        if tokens is None:
            raise ValueError("A text-conditioned model needs batch['tokens'] (data.text_length).")
        # Caption dropout to the empty caption, the null context of guidance.
        drop = jax.random.uniform(jax.random.fold_in(label_key, 1), labels.shape) < label_dropout
        null = text_encoder.null_tokens(batch_size, tokens.shape[1])
        tokens = jnp.where(drop[:, None], null, tokens)
    else:
        tokens = None
    context = None
    if text_encoder.is_context_conditioned(model):
        if "context" not in batch:
            raise ValueError(
                "A model on stored embeddings needs batch['context'] and batch['context_mask'] "
                "(data.text_embeddings)."
            )
        # Caption dropout to the null context: zero embeddings, every key masked (the same
        # draw as the tokens' above).
        drop = jax.random.uniform(jax.random.fold_in(label_key, 1), labels.shape) < label_dropout
        context = {
            "context": jnp.where(drop[:, None, None], 0.0, batch["context"]),
            "context_mask": jnp.where(drop[:, None], False, batch["context_mask"]),
        }
    # Its own key (not a fifth split above), so models without it draw exactly as before.
    cond = {}
    if conditioning_fn is not None:
        cond = conditioning_fn(images, jax.random.fold_in(key, 1))

    def loss_fn(params, micro):
        x0, t_micro, noise_micro, y, w, tok, ctx, c, rng = micro
        model_fn = models.model_fn(
            model,
            params,
            y,
            train=True,
            dropout_rng=rng,
            tokens=tok,
            context=ctx,
            conditioning=c or None,
        )
        terms = diffusion.training_losses(
            process, model_fn, x0, t_micro, noise_micro, num_levels=num_levels
        )
        return jnp.mean(terms["loss"] * w), terms

    micro = (images, t, noise, labels, weights, tokens, context, cond)
    grads_fn = functools.partial(_loss_and_grads, loss_fn, grad_accum_steps=grad_accum_steps)
    if mesh is not None:
        grads_fn = sharding.data_parallel(grads_fn, mesh)
    (loss, terms), grads = grads_fn(state.params, micro, dropout_key)

    sampler_state = state.sampler_state
    if importance_sampling:
        per_example = jax.lax.stop_gradient(terms["loss"])
        sampler_state = timestep_sampler_lib.loss_second_moment_update(
            sampler_state, t, per_example
        )
    new_state = state.apply_gradients(grads, sampler_state=sampler_state)
    return new_state, step_metrics(loss, terms, grads, new_state)


def _loss_and_grads(loss_fn, params, micro, dropout_key, *, grad_accum_steps: int):
    """Returns ((mean loss, per-example terms), gradients) of loss_fn over micro's examples; with
    grad_accum_steps > 1 the micro-batches run one after another in a scan."""
    if grad_accum_steps == 1:
        return jax.value_and_grad(loss_fn, has_aux=True)(params, (*micro, dropout_key))
    batch_size = micro[0].shape[0]
    split = lambda x: x.reshape(grad_accum_steps, batch_size // grad_accum_steps, *x.shape[1:])
    micro = jax.tree.map(split, micro)
    rngs = jax.random.split(dropout_key, grad_accum_steps)

    def accumulate(grad_sum, inputs):
        (loss_i, terms_i), grads_i = jax.value_and_grad(loss_fn, has_aux=True)(params, inputs)
        return jax.tree.map(jnp.add, grad_sum, grads_i), (loss_i, terms_i)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, (losses, terms) = jax.lax.scan(accumulate, zeros, (*micro, rngs))
    grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
    terms = jax.tree.map(lambda x: x.reshape(batch_size), terms)
    return (jnp.mean(losses), terms), grads


def make_train_step(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    process,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable:
    """Returns the config's pure step(state, batch) -> (state, metrics): the denoiser's, or
    `classifier.train_step` for a noisy classifier, `autoencoder.train_step` for an autoencoder."""
    if build.is_classifier(config):
        return functools.partial(classifier.train_step, model=model, process=process)
    if build.is_continuous(config):
        from diffax import continuous_train

        return functools.partial(
            continuous_train.train_step,
            model=model,
            gamma=process.schedule_module if process.learned else process.fixed_gamma,
            num_levels=config.data.num_levels,
            weighting=config.diffusion.weighting,
            learned_schedule=process.learned,
            mean_type=config.diffusion.mean_type,
            min_snr_gamma=config.diffusion.min_snr_gamma,
            gamma_range=process.gamma_range,
            label_dropout=config.training.label_dropout,
        )
    if build.is_autoencoder(config):
        from diffax import autoencoder

        training = config.training
        common = dict(
            model=model,
            kl_weight=training.kl_weight,
            reconstruction=training.reconstruction_loss,
            perceptual_fn=build.perceptual_fn(config),
            perceptual_weight=training.perceptual_weight,
        )
        if build.is_gan(config):
            return functools.partial(
                autoencoder.gan_train_step,
                discriminator=build.create_discriminator(config),
                disc_weight=training.disc_weight,
                disc_start=training.disc_start,
                **common,
            )
        return functools.partial(autoencoder.train_step, **common)
    return functools.partial(
        train_step,
        model=model,
        process=process,
        num_levels=build.data_levels(config),
        label_dropout=config.training.label_dropout,
        importance_sampling=config.diffusion.timestep_sampler == "loss_second_moment",
        grad_accum_steps=config.training.grad_accum_steps,
        conditioning_fn=build.conditioning_fn(config, train=True),
        mesh=mesh,
    )


class Trainer:
    """Builds the model, process, mesh, sharded state and jitted step of a config, once; and for
    latent diffusion the frozen autoencoder (`latent`, else None)."""

    def __init__(self, config: ml_collections.ConfigDict, devices=None):
        self.config = config
        self.mesh = sharding.create_mesh(config.mesh.data, config.mesh.fsdp, devices)
        self.latent = latents.load(config, self.mesh) if build.is_latent(config) else None
        self.model = build.create_model(config)
        self.process = build.create_process(config)
        self.tx = build.create_optimizer(config)
        self._init = functools.partial(
            build.init_state, model=self.model, tx=self.tx, config=config
        )
        self.rng = jax.random.PRNGKey(config.seed)
        self.abstract_state, self.state_shardings = build.abstract_state(
            config, self.model, self.tx, self.mesh
        )
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        step = make_train_step(config, self.model, self.process, self.mesh)
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
            batch["context"] = spec((length, self.config.model.text_width), jnp.float32)
            batch["context_mask"] = spec((length,), jnp.bool_)
        elif length:
            batch["tokens"] = spec((length,), jnp.int32)
        return batch

    def compile(self, global_batch_size: int) -> Callable:
        """Lowers and compiles the train step on abstract inputs; shape errors show here."""
        start = time.time()
        compiled = self.train_step.lower(
            self.abstract_state, self.abstract_batch(global_batch_size)
        ).compile()
        logging.info("Compiled the train step in %.1f s.", time.time() - start)
        return compiled


def _progress(total: int, initial: int):
    """Returns a tqdm bar on a terminal, else None."""
    if not sys.stderr.isatty() or jax.process_index() != 0:
        return None
    import tqdm

    return tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (resuming from the workdir's newest checkpoint), then evaluates; returns eval.

    SIGTERM gives Preempted at any moment: saved at the next step while training, at once (the
    checkpoints intact) while compiling or evaluating.
    """
    with preemption.PreemptionGuard() as guard:
        trainer, state, writer = train(config, workdir, guard=guard)
        if build.is_classifier(config) or build.is_autoencoder(config):
            evaluator = (
                evaluate.evaluate_classifier
                if build.is_classifier(config)
                else evaluate.evaluate_autoencoder
            )
            return evaluator(
                config,
                workdir,
                model=trainer.model,
                process=trainer.process,
                mesh=trainer.mesh,
                params=evaluate.eval_params(state, config),
                step=int(jax.device_get(state.step)),
                writer=writer,
            )
        return evaluate.evaluate_params(
            config,
            workdir,
            model=trainer.model,
            process=trainer.process,
            mesh=trainer.mesh,
            params=evaluate.eval_params(state, config),
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

    Returns (trainer, final state, TensorBoard writer or None); raises Preempted on SIGTERM and
    FloatingPointError after training.max_consecutive_skips non-finite updates in a row. Every
    exit waits for the checkpoint being written, so none is left half-saved.
    """
    validation.validate_config(config, None if devices is None else len(devices))
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
    if training.sample_every and not (build.is_classifier(config) or build.is_autoencoder(config)):
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
                manager.wait_until_finished()
                logging.warning("SIGTERM: saved the checkpoint at step %d; exiting.", done)
                raise preemption.Preempted(done)
            if generator is not None and done % training.sample_every == 0:
                evaluate.save_sample_grid(
                    config,
                    workdir,
                    f"samples_{done:08d}",
                    generator,
                    evaluate.eval_params(state, config),
                    seed=done,
                    num_samples=grid_size,
                    latent=trainer.latent,
                )
                last_time, last_step = time.time(), done  # Keep sampling out of the steps/s.
    if bar is not None:
        bar.close()
    manager.wait_until_finished()
    if start_step >= training.num_steps:
        logging.info("Training already finished at step %d.", start_step)
    return trainer, state, writer
