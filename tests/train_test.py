"""Tests of training: configs build, loss falls, sharding is transparent, resume is exact."""

import functools
import json
import os
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10, digits, imagenet64, tiny
from diffax import (
    build,
    checkpointing,
    diffusion,
    evaluate,
    input_pipeline,
    models,
    restore,
    sharding,
    tasks,
    train,
)
from diffax.evaluators import ode_bpd
from diffax.tasks import denoiser


def _run_steps(trainer, config, num_steps, state=None):
    """Trains on the fixed batches 0..num_steps-1; returns (host params, last loss)."""
    state = trainer.init() if state is None else state
    for i in range(num_steps):
        batch = sharding.global_batch(_batch(config, i), trainer.mesh)
        state, metrics = trainer.train_step(state, batch)
    return jax.device_get(state.params), float(metrics["loss"])


def _assert_same_training(a, b):
    """Two (params, loss) results agree to float32 reduction-order tolerance."""
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5)
    chex.assert_trees_all_close(a[0], b[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("make", "out_channels", "min_params", "max_params"),
    [
        (digits, 2, 1e5, 5e6),
        # Ho et al. 2020, appendix B: the CIFAR-10 model has 35.7M parameters.
        (cifar10, 3, 35.5e6, 35.9e6),
        # Improved DDPM ImageNet-64 (ch 128, mult 1,2,3,4, 3 blocks): the count of the same
        # architecture in improved-diffusion is 121M; we check the order of magnitude here and
        # the exact U-Net counts in unet_test.
        (imagenet64, 6, 100e6, 140e6),
    ],
)
def test_every_config_builds_its_model_abstractly(make, out_channels, min_params, max_params):
    config = make.get_config()
    model = build.create_model(config)
    assert model.out_channels == out_channels
    tx = tasks.create_optimizer(config)
    state = jax.eval_shape(
        functools.partial(tasks.init_state, model=model, tx=tx, config=config),
        jax.random.PRNGKey(0),
    )
    n = models.count_params(state.params)
    assert min_params <= n <= max_params, n
    assert len(state.ema_params) == len(config.training.ema_rates)
    assert tasks.create_process(config).num_timesteps == config.diffusion.num_timesteps


def _fixed_loss(trainer, params, batch, key):
    """The loss on a fixed batch at fixed timesteps and noise: a gauge of what training learned."""
    process = trainer.process
    t = jax.random.randint(key, (batch["image"].shape[0],), 0, process.num_timesteps)
    noise = jax.random.normal(jax.random.fold_in(key, 1), batch["image"].shape)
    model_fn = models.model_fn(trainer.model, params, batch["label"])
    out = diffusion.training_losses(process, model_fn, batch["image"], t, noise, num_levels=17)
    return jnp.mean(out["loss"])


def test_a_few_steps_reduce_the_loss_on_digits(tiny_config):
    config = tiny_config(num_steps=40, batch_size=32, learning_rate=2e-3, warmup_steps=5)
    config.diffusion.loss_type = "mse"  # The gauge: the simple loss, low variance.
    trainer = train.Trainer(config)
    state = trainer.init()
    step = trainer.compile(config.training.batch_size)
    data = input_pipeline.create_train_iterator(config.data, 32, seed=0)
    gauge_batch = sharding.global_batch(next(data), trainer.mesh)
    gauge = jax.jit(
        lambda params: jnp.mean(
            jnp.stack(
                [_fixed_loss(trainer, params, gauge_batch, jax.random.PRNGKey(i)) for i in range(4)]
            )
        )
    )
    before = float(gauge(state.params))
    for _ in range(config.training.num_steps):
        state, metrics = step(state, sharding.global_batch(next(data), trainer.mesh))
    after = float(gauge(state.params))
    assert np.isfinite(float(metrics["loss"]))
    assert after < 0.7 * before, (before, after)


def _batch(config, seed=0):
    rng = np.random.default_rng(seed)
    b, s = config.training.batch_size, config.data.image_size
    levels = rng.integers(0, 17, size=(b, s, s, 1))
    return {
        "image": (levels / 16 * 2 - 1).astype(np.float32),
        "label": rng.integers(0, 10, size=(b,)).astype(np.int32),
    }


def test_eight_device_step_matches_one_device_step():
    config = tiny.get_config()  # The hybrid loss with importance sampling: every path at once.
    config.diffusion.timestep_sampler = "loss_second_moment"
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        trainer = train.Trainer(config, devices)
        assert trainer.mesh.size == len(devices)
        results.append(_run_steps(trainer, config, 2))
    _assert_same_training(*results)


def test_data_parallel_averages_each_devices_gradients_drawn_with_its_own_key():
    mesh = sharding.create_mesh()
    n = mesh.shape[sharding.DATA]
    assert n > 1

    def grads_fn(params, batch, key):  # A draw from the key in the loss, aux and gradients.
        u = jax.random.uniform(key, ())
        loss = jnp.mean(batch * params["w"][0]) + u
        return (loss, batch + u), {"w": jnp.mean(batch) * params["w"] + u, "b": jnp.sum(batch)}

    params = {"w": jnp.array([1.0, 2.0, 3.0]), "b": jnp.zeros(())}
    batch = jnp.arange(4.0 * n)
    key = jax.random.PRNGKey(3)
    (loss, aux), grads = jax.jit(sharding.data_parallel(grads_fn, mesh))(params, batch, key)
    # Independently: each device's four examples with fold_in(key, device), then the mean.
    parts = [
        grads_fn(params, batch[4 * i : 4 * i + 4], jax.random.fold_in(key, i)) for i in range(n)
    ]
    np.testing.assert_allclose(loss, np.mean([p[0][0] for p in parts]), rtol=1e-6)
    np.testing.assert_allclose(aux, np.concatenate([p[0][1] for p in parts]), rtol=1e-6)
    for name in grads:
        want = np.mean([p[1][name] for p in parts], axis=0)
        np.testing.assert_allclose(grads[name], want, rtol=1e-6)
    assert len({float(p[0][1][0] - batch[4 * i]) for i, p in enumerate(parts)}) == n


def test_the_step_all_reduces_the_gradients_as_one_flat_vector():
    # XLA's CPU runtime meets the devices once per all-reduce operand (7-10 ms of the digits step
    # with one per parameter leaf); the data-parallel step sends one vector (and scalar metrics).
    config = tiny.get_config()
    trainer = train.Trainer(config)
    hlo = trainer.compile(config.training.batch_size).as_text()
    results = re.findall(r"= (\(.*?\)|\S+) all-reduce(?:-start)?\(", hlo)
    operands = [shape for result in results for shape in re.findall(r"\w+\[[\d,]*\]", result)]
    num_params = models.count_params(trainer.abstract_state.params)
    assert [shape for shape in operands if shape != "f32[]"] == [f"f32[{num_params}]"]


def test_fsdp_sharded_parameters_train_like_replicated_ones():
    config = tiny.get_config()
    config.model.unet.dropout = 0.0
    results = []
    for fsdp in (1, 4):
        config.mesh.fsdp = fsdp
        trainer = train.Trainer(config)
        state = trainer.init()
        if fsdp > 1:  # Some arrays really are split over the fsdp axis.
            specs = [x.sharding.spec for x in jax.tree.leaves(state.params)]
            assert any(sharding.FSDP in spec for spec in specs)
            kernel = state.opt_state[1][0].mu["out_conv"]["kernel"]
            assert sharding.FSDP in kernel.sharding.spec or kernel.size < 2**14
        results.append(_run_steps(trainer, config, 2, state))
    _assert_same_training(*results)


def test_non_finite_batches_are_skipped_and_training_stops_after_the_limit(
    tiny_config, tmp_path, monkeypatch
):
    config = tiny_config(num_steps=10, log_every=1, max_consecutive_skips=3)
    real = input_pipeline.create_train_iterator

    def poisoned(*args, **kwargs):
        for batch in real(*args, **kwargs):
            yield {**batch, "image": np.full_like(batch["image"], np.nan)}

    monkeypatch.setattr(input_pipeline, "create_train_iterator", poisoned)
    with pytest.raises(FloatingPointError, match="3 consecutive non-finite updates at step 3"):
        train.train(config, str(tmp_path))


def test_a_run_of_skips_between_log_steps_still_stops_before_the_next_checkpoint(
    tiny_config, tmp_path, monkeypatch
):
    """Steps 2-4 are non-finite, then the data recover; logs every 100 steps, saves at 6: the
    run must stop at the save naming step 4, and write no checkpoint after the damage."""
    config = tiny_config(
        num_steps=8, log_every=100, checkpoint_every=6, max_consecutive_skips=3, sample_every=0
    )
    real = input_pipeline.create_train_iterator

    def poisoned(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            bad = 1 <= i <= 3
            yield {**batch, "image": np.full_like(batch["image"], np.nan)} if bad else batch

    monkeypatch.setattr(input_pipeline, "create_train_iterator", poisoned)
    with pytest.raises(FloatingPointError, match="3 consecutive non-finite updates at step 4"):
        train.train(config, str(tmp_path))
    manager = checkpointing.create_manager(str(tmp_path), read_only=True)
    assert manager.latest_step() is None


def test_train_step_compiles_once():
    config = tiny.get_config()
    trainer = train.Trainer(config)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, batch):
        return denoiser.train_step(
            state,
            batch,
            model=trainer.model,
            process=trainer.process,
            num_levels=17,
            label_dropout=0.1,
            importance_sampling=False,
        )

    state = trainer.init()
    for i in range(3):
        state, _ = step(state, sharding.global_batch(_batch(config, i), trainer.mesh))
    assert int(state.step) == 3


def test_gradient_accumulation_matches_the_full_batch():
    config = tiny.get_config()
    config.model.unet.dropout = 0.0
    outs = []
    for accum in (1, 2):
        config.training.grad_accum_steps = accum
        outs.append(_run_steps(train.Trainer(config), config, 1))
    _assert_same_training(*outs)


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tiny_config, tmp_path):
    straight = tiny_config(num_steps=4, checkpoint_every=2)
    _, state_straight, _ = train.train(straight, str(tmp_path / "straight"))
    first_half = tiny_config(num_steps=2, checkpoint_every=2)
    train.train(first_half, str(tmp_path / "resumed"))
    _, state_resumed, _ = train.train(straight, str(tmp_path / "resumed"))
    assert int(state_resumed.step) == int(state_straight.step) == 4
    jax.tree.map(
        np.testing.assert_array_equal,
        jax.device_get(
            (state_straight.params, state_straight.ema_params, state_straight.opt_state)
        ),
        jax.device_get((state_resumed.params, state_resumed.ema_params, state_resumed.opt_state)),
    )


def test_eval_and_sample_from_a_checkpoint(tiny_config, tmp_path):
    config = tiny_config(num_steps=2, checkpoint_every=2)
    config.eval.conditional_bpd = True
    workdir = str(tmp_path)
    train.train(config, workdir)
    results = evaluate.evaluate_checkpoint(config, workdir)
    assert results["step"] == 2
    for key in ("test/bpd", "test/bpd_conditional", "test/prior_bpd"):
        assert np.isfinite(results[key]) and results[key] > 0, key
    assert results["test/num_examples"] == config.eval.num_bpd_examples
    with open(os.path.join(workdir, "eval_00000002.json")) as f:
        assert json.load(f)["test/bpd"] == results["test/bpd"]
    assert os.path.exists(results["samples_png"])
    png = evaluate.sample_checkpoint(config, workdir, num_samples=5)
    saved = np.load(png.replace(".png", ".npz"))
    assert saved["levels"].shape == (5, 8, 8, 1) and saved["levels"].max() <= 16


def test_eval_without_a_checkpoint_says_so(tiny_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint in .*--mode=train"):
        evaluate.evaluate_checkpoint(tiny_config(), str(tmp_path))


def test_checkpoint_of_another_model_shape_is_refused(tiny_config, tmp_path, monkeypatch):
    config = tiny_config(num_steps=2, checkpoint_every=2)
    monkeypatch.chdir(tmp_path)
    train.train(config, "relative/workdir")  # A relative workdir, as in the README.
    monkeypatch.chdir("relative")
    config = tiny_config(num_steps=2, checkpoint_every=2)
    config.model.unet.ch = 64
    config.model.unet.num_head_channels = 64
    with pytest.raises(ValueError, match="does not fit this config.*params/"):
        train.train(config, "workdir")
    assert checkpointing.create_manager("workdir", read_only=True).latest_step() == 2


def test_a_noisy_classifier_trains_evaluates_and_guides_from_its_workdir(tiny_config, tmp_path):
    from configs import digits_classifier

    config = digits_classifier.get_config()
    config.data.data_dir = tiny_config().data.data_dir
    config.diffusion.num_timesteps = 20
    config.model.unet.attention_resolutions = ()
    config.training.update(num_steps=2, checkpoint_every=2, log_every=1, batch_size=16)
    config.eval.update(batch_size=32, num_bpd_examples=32, sample_steps=0)
    workdir = str(tmp_path / "classifier")
    results = train.train_and_evaluate(config, workdir)
    assert set(results) >= {"test/accuracy_t0", "test/accuracy_t5", "test/num_examples"}
    assert 0.0 <= results["test/accuracy_t0"] <= 1.0
    # A diffusion model on the same process finds it through eval.classifier_workdir.
    sampled = tiny_config(**{"eval.classifier_scale": 1.0, "eval.classifier_workdir": workdir})
    mesh = sharding.create_mesh()
    model, params = restore.guidance_classifier(sampled.eval, sampled.diffusion, mesh)
    assert model.num_classes == 10 and models.count_params(params) > 0
    sampled.diffusion.num_timesteps = 40
    with pytest.raises(ValueError, match="diffusion.num_timesteps=20"):
        restore.guidance_classifier(sampled.eval, sampled.diffusion, mesh)
    with pytest.raises(FileNotFoundError, match="eval.classifier_workdir"):
        sampled.eval.classifier_workdir = str(tmp_path / "nothing")
        restore.guidance_classifier(sampled.eval, sampled.diffusion, mesh)


def test_an_autoencoder_trains_and_reports_psnr_and_its_latent_scale(tiny_config, tmp_path):
    from configs import digits_autoencoder

    config = digits_autoencoder.get_config()
    config.data.data_dir = tiny_config().data.data_dir
    config.data.image_size = 8  # f = 4 on the digits' own size: 2x2x4 latents, fast.
    config.model.autoencoder.block_out_channels = (16, 16, 16)
    config.training.update(num_steps=2, checkpoint_every=2, log_every=1, batch_size=16)
    config.eval.update(batch_size=32, num_bpd_examples=32)
    workdir = str(tmp_path / "autoencoder")
    results = train.train_and_evaluate(config, workdir)
    assert results["test/num_examples"] == 32
    assert np.isfinite(results["test/psnr"]) and results["latent/scale"] > 0
    with open(os.path.join(workdir, "latent_stats.json")) as f:
        assert json.load(f)["scale"] == results["latent/scale"]
    assert os.path.exists(results["reconstructions_png"])
    again = evaluate.evaluate_checkpoint(config, workdir)  # --mode=eval restores it.
    assert again["test/psnr"] == pytest.approx(results["test/psnr"])


# The learned schedule end to end (fixed schedules' bound, grids and sampling: continuous_test).
@pytest.mark.parametrize("schedule", ["learned"])
def test_a_continuous_vdm_trains_reports_its_bound_and_samples(
    tiny_config, tmp_path, schedule, classifier_path
):
    from configs import digits_vdm

    config = digits_vdm.get_config()
    tiny = tiny_config()
    config.data.data_dir = tiny.data.data_dir
    config.eval.classifier_path = classifier_path  # The shared one: not trained again.
    # One 8x8 level, attention in the middle block only (conftest.SMALL_UNET).
    config.model.unet.update(
        ch=32, channel_mult=(1,), num_res_blocks=1, dropout=0.0, attention_resolutions=()
    )
    config.diffusion.update(gamma_schedule=schedule, schedule_hidden=16)
    config.training.update(num_steps=2, checkpoint_every=2, log_every=1, batch_size=16)
    # 8 examples: the PF-ODE bits/dim solves one example at a time.
    config.eval.update(
        batch_size=32, num_bpd_examples=8, num_samples=16, sample_steps=5, bpd_t_samples=2
    )
    # The PF-ODE likelihood on request (loose tolerance: an untrained model, a smoke test).
    config.eval.update(ode_bpd=schedule == "learned", ode_tolerance=1e-3)
    workdir = str(tmp_path / schedule)
    results = train.train_and_evaluate(config, workdir)
    # The bound in bits/dim: prior + reconstruction + diffusion terms, each finite and >= 0.
    parts = results["test/prior_bpd"] + results["test/decoder_bpd"] + results["test/diffusion_bpd"]
    assert results["test/bpd"] == pytest.approx(parts, rel=1e-5)
    assert min(results["test/prior_bpd"], results["test/decoder_bpd"]) >= 0
    assert results["sampler"] == "ancestral-5" and results["sampler_nfe"] == 5
    if config.eval.ode_bpd:  # Dequantized data: a density, so bits/dim can be of either sign.
        assert np.isfinite(results["test/ode_bpd"])
    png = evaluate.sample_checkpoint(config, workdir, num_samples=4)
    saved = np.load(png.replace(".png", ".npz"))
    assert saved["levels"].shape == (4, 8, 8, 1)


def test_the_ode_likelihood_of_a_class_conditional_discrete_model(tiny_config):
    """The PF-ODE solver runs one example at a time, so the null label is one label (was the
    batch's: a shape error for every class-conditional model)."""
    config = tiny_config(**{"eval.num_bpd_examples": 8, "eval.batch_size": 8})
    config.eval.update(ode_bpd=True, ode_divergence="hutchinson", ode_tolerance=1e-2)
    trainer = train.Trainer(config)
    assert trainer.model.num_classes == 10
    params = tasks.eval_params(trainer.init(), config)
    out = ode_bpd.evaluate_ode_bpd(config, trainer.model, trainer.process, trainer.mesh, params)
    assert np.isfinite(out["ode_bpd"])


def _text_batch(config, seed=0):
    from diffax.datasets import captions
    from diffax.models import text_encoder

    batch = _batch(config, seed)
    texts = captions.captions(batch["label"], seed, "train")
    batch["tokens"] = text_encoder.tokenize(texts, config.data.text_length)
    return batch


def test_text_train_step_compiles_once_trains_the_encoder_and_drops_captions():
    from configs import tiny_text

    config = tiny_text.get_config()
    trainer = train.Trainer(config)

    options = dict(
        model=trainer.model, process=trainer.process, num_levels=17, importance_sampling=False
    )

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, batch, label_dropout):
        return denoiser.train_step(state, batch, label_dropout=label_dropout, **options)

    state = trainer.init()
    before = jax.device_get(state.params)
    # Four steps: warmup starts at rate 0, and the zero output projections pass the encoder no
    # gradient until they have moved.
    for i in range(4):
        batch = sharding.global_batch(_text_batch(config, i), trainer.mesh)
        state, metrics = step(state, batch, 0.1)
    chex.assert_tree_all_finite(metrics)
    assert set(state.params) == {"denoiser", "encoder"}
    embed = "token_embed"
    assert not np.allclose(
        before["encoder"][embed]["embedding"], state.params["encoder"][embed]["embedding"]
    )
    # Every caption dropped, the step cannot tell two batches' captions apart; none dropped, it can.
    batch = _text_batch(config, 0)
    other = dict(batch, tokens=np.roll(batch["tokens"], 1, axis=0))
    # The same compiled step (the state is not donated), metrics only.
    loss = lambda b, p: float(step(state, sharding.global_batch(b, trainer.mesh), p)[1]["loss"])
    assert loss(batch, 1.0) == loss(other, 1.0)
    assert loss(batch, 0.0) != loss(other, 0.0)
