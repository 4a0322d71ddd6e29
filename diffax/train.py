"""The training loop; train_step is a module-level pure function, sharded where it is called."""

import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from diffax import (
    checkpointing,
    diffusion,
    evaluate,
    input_pipeline,
    preemption,
    schedules,
    sharding,
    validation,
)
from diffax import timestep_sampler as ts
from diffax.models import unet
from diffax.train_state import TrainState


def create_model(config: ml_collections.ConfigDict) -> unet.UNet:
    """Translates the config once into the U-Net's explicit hyperparameters."""
    m = config.model
    channels = config.data.num_channels
    learn_sigma = config.diffusion.var_type in ("learned", "learned_range")
    return unet.UNet(
        out_channels=channels * (2 if learn_sigma else 1),
        ch=m.ch,
        channel_mult=tuple(m.channel_mult),
        num_res_blocks=m.num_res_blocks,
        attention_resolutions=tuple(m.attention_resolutions),
        num_heads=m.num_heads,
        num_head_channels=m.num_head_channels,
        dropout=m.dropout,
        resblock_updown=m.resblock_updown,
        use_scale_shift_norm=m.use_scale_shift_norm,
        num_classes=config.data.num_classes if m.class_cond else 0,
        dtype=jnp.dtype(m.dtype),
        remat=m.remat,
    )


def create_diffusion(config: ml_collections.ConfigDict) -> diffusion.GaussianDiffusion:
    """Returns the training process of the config."""
    d = config.diffusion
    betas = schedules.get_named_beta_schedule(d.schedule, d.num_timesteps)
    return diffusion.GaussianDiffusion.create(
        betas, mean_type=d.mean_type, var_type=d.var_type, loss_type=d.loss_type
    )


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Returns linear warmup to the peak rate, then constant (as DDPM and improved DDPM)."""
    t = config.training
    if t.warmup_steps <= 0:
        return optax.constant_schedule(t.learning_rate)
    return optax.linear_schedule(0.0, t.learning_rate, t.warmup_steps)


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Returns AdamW with warmup and optional global-norm clipping."""
    t = config.training
    adamw = optax.adamw(
        learning_rate_schedule(config), b1=t.adam_b1, b2=t.adam_b2, weight_decay=t.weight_decay
    )
    if t.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(t.grad_clip), adamw)
    return adamw


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """Returns [H, W, C] of the config's images."""
    return (config.data.image_size, config.data.image_size, config.data.num_channels)


def init_state(
    rng: jax.Array, *, model: unet.UNet, tx: optax.GradientTransformation, config
) -> TrainState:
    """Returns a fresh train state (pure; jit it with out_shardings to allocate it sharded)."""
    param_rng, state_rng = jax.random.split(rng)
    x = jnp.zeros((1, *image_shape(config)), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    y = jnp.zeros((1,), jnp.int32) if model.num_classes else None
    params = model.init({"params": param_rng}, x, t, y, train=False)["params"]
    return TrainState.create(
        params=params,
        tx=tx,
        ema_rates=tuple(config.training.ema_rates),
        rng=state_rng,
        sampler_state=ts.loss_second_moment_init(config.diffusion.num_timesteps),
    )


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: unet.UNet,
    process: diffusion.GaussianDiffusion,
    num_levels: int,
    label_dropout: float,
    importance_sampling: bool,
    grad_accum_steps: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a global batch {"image": [B, H, W, C], "label": [B]}; pure."""
    images, labels = batch["image"], batch["label"]
    batch_size = images.shape[0]
    # Every random draw derives from (base key, step): a resumed run repeats them exactly.
    key = jax.random.fold_in(state.rng, state.step)
    t_key, noise_key, label_key, dropout_key = jax.random.split(key, 4)
    if importance_sampling:
        t, weights = ts.loss_second_moment_sample(state.sampler_state, t_key, batch_size)
    else:
        t, weights = ts.uniform_sample(t_key, batch_size, process.num_timesteps)
    noise = jax.random.normal(noise_key, images.shape, images.dtype)
    if model.num_classes:
        drop = jax.random.uniform(label_key, labels.shape) < label_dropout
        labels = jnp.where(drop, model.num_classes, labels)  # The null class.

    def loss_fn(params, micro):
        x0, tt, eps, y, w, rng = micro

        def model_fn(x_t, timesteps):
            return model.apply(
                {"params": params},
                x_t,
                timesteps,
                y if model.num_classes else None,
                train=True,
                rngs={"dropout": rng},
            )

        terms = diffusion.training_losses(process, model_fn, x0, tt, eps, num_levels=num_levels)
        return jnp.mean(terms["loss"] * w), terms

    micro = (images, t, noise, labels, weights)
    if grad_accum_steps == 1:
        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, (*micro, dropout_key)
        )
    else:
        # Micro-batches run one after another in a scan; gradients are averaged.
        split = lambda x: x.reshape(grad_accum_steps, batch_size // grad_accum_steps, *x.shape[1:])
        micro = jax.tree.map(split, micro)
        rngs = jax.random.split(dropout_key, grad_accum_steps)

        def accumulate(grad_sum, inputs):
            (loss_i, terms_i), grads_i = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params, inputs
            )
            return jax.tree.map(jnp.add, grad_sum, grads_i), (loss_i, terms_i)

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        grads, (losses, terms) = jax.lax.scan(accumulate, zeros, (*micro, rngs))
        grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
        loss = jnp.mean(losses)
        terms = jax.tree.map(lambda x: x.reshape(batch_size), terms)

    sampler_state = state.sampler_state
    if importance_sampling:
        per_example = jax.lax.stop_gradient(terms["loss"])
        sampler_state = ts.loss_second_moment_update(sampler_state, t, per_example)
    new_state = state.apply_gradients(grads, sampler_state=sampler_state)
    metrics = {
        "loss": loss,
        "mse": jnp.mean(terms["mse"]),
        "vb": jnp.mean(terms["vb"]),
        "grad_norm": optax.global_norm(grads),
        "skipped": new_state.skipped,
        "consecutive_skips": new_state.consecutive_skips,
    }
    return new_state, metrics


class Trainer:
    """Builds the model, process, mesh, sharded state and jitted step of a config, once."""

    def __init__(self, config: ml_collections.ConfigDict, devices=None):
        self.config = config
        self.mesh = sharding.create_mesh(config.mesh.data, config.mesh.fsdp, devices)
        self.model = create_model(config)
        self.process = create_diffusion(config)
        self.tx = create_optimizer(config)
        self._init = functools.partial(init_state, model=self.model, tx=self.tx, config=config)
        rng = jax.random.PRNGKey(config.seed)
        self.rng = rng
        abstract = jax.eval_shape(self._init, rng)
        self.state_shardings = sharding.state_shardings(self.mesh, abstract)
        self.abstract_state = checkpointing.abstract_with_shardings(abstract, self.state_shardings)
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        step = functools.partial(
            train_step,
            model=self.model,
            process=self.process,
            num_levels=config.data.num_levels,
            label_dropout=config.training.label_dropout,
            importance_sampling=config.diffusion.timestep_sampler == "loss_second_moment",
            grad_accum_steps=config.training.grad_accum_steps,
        )
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
        return {
            "image": jax.ShapeDtypeStruct(
                (global_batch_size, *image_shape(self.config)),
                jnp.float32,
                sharding=self.batch_sharding,
            ),
            "label": jax.ShapeDtypeStruct(
                (global_batch_size,), jnp.int32, sharding=self.batch_sharding
            ),
        }

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
    import sys

    if not sys.stderr.isatty() or jax.process_index() != 0:
        return None
    import tqdm

    return tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (resuming from the workdir's newest checkpoint), then evaluates; returns eval."""
    trainer, state, writer = train(config, workdir)
    return evaluate.evaluate_state(config, workdir, trainer, state, writer=writer)


def train(config: ml_collections.ConfigDict, workdir: str, devices=None):
    """Trains to training.num_steps, resuming from the newest checkpoint.

    Returns (trainer, final state, TensorBoard writer or None); raises Preempted on SIGTERM.
    """
    validation.validate_config(config, None if devices is None else len(devices))
    trainer = Trainer(config, devices)
    t = config.training
    manager = checkpointing.create_manager(workdir, max_to_keep=t.keep_checkpoints)
    restored = checkpointing.restore(manager, trainer.abstract_state)
    if restored is None:
        state, start_step = trainer.init(), 0
        logging.info("Initialised a new model in %s.", workdir)
    else:
        state, start_step = restored
        logging.info("Resumed from step %d in %s.", start_step, workdir)
    logging.info("Model parameters: %d", unet.count_params(state.params))

    step_fn = trainer.compile(t.batch_size)
    local_batch = sharding.per_process_batch_size(t.batch_size)
    train_iter = input_pipeline.create_train_iterator(
        config.data, local_batch, seed=config.seed, start_batch=start_step
    )
    writer = evaluate.create_writer(workdir)
    grid_size = min(config.eval.num_samples, 100)  # Grids during training: 100 at most.
    sampler = evaluate.Sampler(
        config, trainer.model, trainer.process, trainer.mesh, num_samples=grid_size
    )
    bar = _progress(t.num_steps, start_step)
    guard = preemption.PreemptionGuard()
    last_time, last_step = time.time(), start_step
    for step in range(start_step, t.num_steps):
        batch = sharding.global_batch(next(train_iter), trainer.mesh)
        state, metrics = step_fn(state, batch)
        done = step + 1
        if bar is not None:
            bar.update(1)
        if done % t.log_every == 0 or done == t.num_steps:
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            now = time.time()
            metrics["steps_per_sec"] = (done - last_step) / (now - last_time)
            metrics["images_per_sec"] = metrics["steps_per_sec"] * t.batch_size
            last_time, last_step = now, done
            evaluate.write_scalars(writer, done, {f"train/{k}": v for k, v in metrics.items()})
            logging.log_if(
                logging.INFO,
                "step %d: loss %.4f mse %.4f vb %.4f | %.1f steps/s %.0f images/s",
                jax.process_index() == 0,
                done,
                metrics["loss"],
                metrics["mse"],
                metrics["vb"],
                metrics["steps_per_sec"],
                metrics["images_per_sec"],
            )
            if metrics["consecutive_skips"] >= t.max_consecutive_skips:
                raise FloatingPointError(
                    f"{int(metrics['consecutive_skips'])} consecutive non-finite updates at step "
                    f"{done} (training.max_consecutive_skips={t.max_consecutive_skips}); lower "
                    "training.learning_rate or check the data."
                )
        stop = guard.should_stop(done)
        if stop or done % t.checkpoint_every == 0 or done == t.num_steps:
            checkpointing.save(manager, done, state, config)
        if stop:
            manager.wait_until_finished()
            guard.close()
            logging.warning("SIGTERM: saved the checkpoint at step %d; exiting.", done)
            raise preemption.Preempted(done)
        if t.sample_every and done % t.sample_every == 0:
            images = sampler.generate(evaluate.eval_params(state, config), grid_size, done)
            evaluate.save_samples(workdir, f"samples_{done:08d}", images, config)
            last_time, last_step = time.time(), done  # Keep sampling out of the steps/s.
    if bar is not None:
        bar.close()
    guard.close()
    manager.wait_until_finished()
    if start_step >= t.num_steps:
        logging.info("Training already finished at step %d.", start_step)
    return trainer, state, writer


def _restore_for_eval(config: ml_collections.ConfigDict, workdir: str) -> tuple[Trainer, Any]:
    """Returns the trainer and the newest checkpoint's state; a clear error when there is none."""
    trainer = Trainer(config)
    manager = checkpointing.create_manager(workdir, read_only=True)
    restored = checkpointing.restore(manager, trainer.abstract_state)
    if restored is None:
        raise FileNotFoundError(
            f"No checkpoint in {checkpointing.checkpoint_dir(workdir)}: train first with "
            "--mode=train, or point --workdir at a trained run."
        )
    return trainer, restored[0]


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Restores the newest checkpoint and runs the full evaluation on it."""
    validation.validate_config(config)
    trainer, state = _restore_for_eval(config, workdir)
    return evaluate.evaluate_state(config, workdir, trainer, state, evaluate.create_writer(workdir))


def sample_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, num_samples: int | None = None
) -> str:
    """Restores the newest checkpoint and writes num_samples samples as a PNG grid and .npz."""
    validation.validate_config(config)
    trainer, state = _restore_for_eval(config, workdir)
    num_samples = num_samples or config.eval.num_samples
    sampler = evaluate.Sampler(
        config, trainer.model, trainer.process, trainer.mesh, num_samples=num_samples
    )
    step = int(jax.device_get(state.step))
    images = sampler.generate(evaluate.eval_params(state, config), num_samples, seed=step + 1)
    path = evaluate.save_samples(
        workdir, f"samples_{step:08d}_n{num_samples}", images, config, sampler.labels(num_samples)
    )
    logging.info("Wrote %d samples to %s", num_samples, path)
    return path
