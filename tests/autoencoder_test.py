"""Tests for diffax.autoencoder_losses and diffax.models.autoencoder: shapes, KL, scale,
training."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from sklearn.datasets import load_digits

from configs import digits_autoencoder, digits_autoencoder_gan
from diffax import autoencoder_losses, evaluate, latents, sharding, train
from diffax.models import count_params
from diffax.models.autoencoder import AutoencoderKL, PatchDiscriminator
from diffax.tasks import autoencoder as autoencoder_task
from diffax.train_state import TrainState

# --- The network ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "block_out_channels, factor",
    [((64, 128, 128), 4), ((128, 256, 512, 512), 8)],  # LDM's f = 4 and Stable Diffusion's f = 8.
)
def test_encoder_and_decoder_shapes(block_out_channels, factor):
    model = AutoencoderKL(
        in_channels=3, out_channels=3, z_channels=4, block_out_channels=block_out_channels
    )
    assert model.downsample_factor == factor
    x = jax.ShapeDtypeStruct((2, 64, 32, 3), jnp.float32)
    variables = jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x, sample_posterior=False), x
    )
    mean, logvar = jax.eval_shape(functools.partial(model.apply, method=model.encode), variables, x)
    chex.assert_shape([mean, logvar], (2, 64 // factor, 32 // factor, 4))
    z = jax.ShapeDtypeStruct((2, 64 // factor, 32 // factor, 4), jnp.float32)
    decoded = jax.eval_shape(functools.partial(model.apply, method=model.decode), variables, z)
    chex.assert_shape(decoded, (2, 64, 32, 3))
    recon, _, _ = jax.eval_shape(model.apply, variables, x, jax.random.key(1))
    chex.assert_shape(recon, (2, 64, 32, 3))


def test_encoder_refuses_sides_not_divisible_by_f():
    model = AutoencoderKL(block_out_channels=(32, 32, 32), norm_num_groups=8)
    x = jax.ShapeDtypeStruct((1, 10, 10, 3), jnp.float32)  # 10 is not a multiple of f = 4.
    with pytest.raises(ValueError, match="multiples of f = 4"):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x, sample_posterior=False), x)


# --- Pure math -----------------------------------------------------------------------------------


class KlTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_kl_matches_closed_form(self):
        rng = np.random.default_rng(0)
        mean = rng.normal(size=(3, 2, 2, 4)).astype(np.float32)
        logvar = rng.normal(size=(3, 2, 2, 4)).astype(np.float32)
        kl = self.variant(autoencoder_losses.kl_to_standard_normal)(mean, logvar)
        m, lv = mean.astype(np.float64), logvar.astype(np.float64)
        expected = 0.5 * np.sum(m**2 + np.exp(lv) - 1.0 - lv, axis=(1, 2, 3))
        chex.assert_shape(kl, (3,))
        np.testing.assert_allclose(kl, expected, rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_loss_is_reconstruction_plus_weighted_kl(self):
        rng = np.random.default_rng(1)
        x, x_hat = rng.uniform(-1, 1, size=(2, 2, 4, 4, 3)).astype(np.float32)
        mean, logvar = rng.normal(size=(2, 2, 1, 1, 4)).astype(np.float32)
        terms = self.variant(autoencoder_losses.autoencoder_loss, static_argnames="kind")(
            x, x_hat, mean, logvar, kl_weight=0.5, kind="l2"
        )
        np.testing.assert_allclose(terms["rec"], np.sum((x - x_hat) ** 2, axis=(1, 2, 3)), 1e-5)
        np.testing.assert_allclose(terms["loss"], terms["rec"] + 0.5 * terms["kl"], rtol=1e-6)


def test_kl_matches_monte_carlo():
    mean = jnp.array([[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]])
    logvar = jnp.array([[-1.0, 0.5, 0.0], [0.2, -2.0, 1.0]])
    eps = jax.random.normal(jax.random.key(0), (100_000, *mean.shape))
    z = mean + jnp.exp(0.5 * logvar) * eps
    # log q(z) - log p(z) for diagonal Gaussians, summed over the latent dimensions.
    log_ratio = jnp.sum(-0.5 * logvar - 0.5 * eps**2 + 0.5 * z**2, axis=-1)  # [S, B]
    estimate, stderr = jnp.mean(log_ratio, 0), jnp.std(log_ratio, 0) / np.sqrt(eps.shape[0])
    exact = autoencoder_losses.kl_to_standard_normal(mean, logvar)
    assert np.all(np.abs(estimate - exact) < 4 * stderr), (estimate, exact, stderr)
    np.testing.assert_allclose(autoencoder_losses.kl_to_standard_normal(0 * mean, 0 * logvar), 0.0)


def test_reconstruction_loss_kinds():
    x, x_hat = jnp.zeros((2, 2, 2, 1)), jnp.full((2, 2, 2, 1), -0.5)
    np.testing.assert_allclose(autoencoder_losses.reconstruction_loss(x, x_hat, "l1"), [2.0, 2.0])
    np.testing.assert_allclose(autoencoder_losses.reconstruction_loss(x, x_hat, "l2"), [1.0, 1.0])
    with pytest.raises(ValueError, match="l1"):
        autoencoder_losses.reconstruction_loss(x, x_hat, "lpips")


def test_latent_stats_from_sums_standardise_all_elements_and_each_channel():
    channel_mean, channel_std = np.array([1.0, -2.0, 0.0]), np.array([0.5, 2.0, 4.0])
    rng = np.random.default_rng(0)
    latents = channel_mean + channel_std * rng.standard_normal((32, 8, 8, 3))
    # Summed in two halves, as the evaluator sums batch by batch.
    halves = np.split(latents, 2)
    total, total_sq = sum(h.sum() for h in halves), sum(np.square(h).sum() for h in halves)
    mean, scale = autoencoder_losses.latent_stats(total, total_sq, latents.size)
    np.testing.assert_allclose(mean, latents.mean(), rtol=1e-10)
    np.testing.assert_allclose(scale, 1 / latents.std(), rtol=1e-10)
    sums = sum(h.sum((0, 1, 2)) for h in halves), sum(np.square(h).sum((0, 1, 2)) for h in halves)
    shift, scale = autoencoder_losses.latent_stats(*sums, latents.size / 3)
    np.testing.assert_allclose(shift, channel_mean, atol=0.1)
    np.testing.assert_allclose(scale, 1 / channel_std, rtol=0.05)
    normalized = autoencoder_losses.normalize_latents(latents, scale, shift)
    np.testing.assert_allclose(normalized.mean((0, 1, 2)), 0.0, atol=1e-10)
    np.testing.assert_allclose(normalized.std((0, 1, 2)), 1.0, rtol=1e-10)
    restored = autoencoder_losses.denormalize_latents(normalized, scale, shift)
    np.testing.assert_allclose(restored, latents, atol=1e-10)


# --- Training ------------------------------------------------------------------------------------


# f = 2: [8, 8, 1] digits -> [4, 4, 4] latents.
TINY = dict(
    in_channels=1, out_channels=1, z_channels=4, block_out_channels=(16, 32), layers_per_block=1
)


@pytest.fixture(scope="module")
def tiny():
    """(model, fresh params, 8 digits [8, 8, 8, 1] in [-1, 1]), shared by the tests below."""
    model = AutoencoderKL(norm_num_groups=8, **TINY)
    images = load_digits().images[:8].astype(np.float32) / 16.0 * 2.0 - 1.0
    # An rbg key: threefry's init of ~150 leaves takes seconds to compile on a CPU.
    init = jax.jit(autoencoder_task.init_params, static_argnums=(1, 2))
    return (
        model,
        init(jax.random.key(0, impl="rbg"), model, (8, 8, 1)),
        jnp.asarray(images[..., None]),
    )


def test_training_improves_reconstruction_and_traces_once(tiny):
    model, params, images = tiny
    state = TrainState.create(
        params=params, tx=optax.adam(2e-3), ema_rates=(), rng=jax.random.key(1)
    )

    @jax.jit
    def reconstruction_psnr(params):
        # decode(mean of q(z|x)): the deterministic reconstruction.
        x_hat, _, _ = model.apply({"params": params}, images, sample_posterior=False)
        return jnp.mean(autoencoder_losses.psnr(images, x_hat))

    before = reconstruction_psnr(state.params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, batch):
        return autoencoder_task.train_step(state, batch, model=model, kl_weight=1e-6)

    for _ in range(100):
        state, metrics = step(state, {"image": images, "label": jnp.zeros(8, jnp.int32)})
    chex.assert_tree_all_finite(metrics)
    assert int(state.step) == 100 and int(metrics["skipped"]) == 0
    assert set(metrics) == {"loss", "rec", "kl", "grad_norm", "skipped", "consecutive_skips"}
    np.testing.assert_allclose(metrics["loss"], metrics["rec"] + 1e-6 * metrics["kl"], rtol=1e-5)
    after = reconstruction_psnr(state.params)
    assert float(after) > float(before) + 8.0 and float(after) > 18.0, (before, after)


def test_posterior_sample_depends_on_key_and_mean_path_is_decode_of_mean(tiny):
    model, params, images = tiny

    @jax.jit
    def run(params):
        variables = {"params": params}
        x_mean, mean, logvar = model.apply(variables, images, sample_posterior=False)
        decoded = model.apply(variables, mean, method=model.decode)
        x_a, _, _ = model.apply(variables, images, jax.random.key(1))
        x_b, _, _ = model.apply(variables, images, jax.random.key(2))
        return x_mean, decoded, logvar, x_a, x_b

    x_mean, decoded, logvar, x_a, x_b = run(params)
    np.testing.assert_allclose(x_mean, decoded, atol=1e-5)
    assert np.all(logvar >= -30.0) and np.all(logvar <= 20.0)
    assert not np.allclose(x_a, x_b) and not np.allclose(x_a, x_mean)


def test_digits_config_gives_8x8x4_latents():
    config = digits_autoencoder.get_config()
    m = config.model.autoencoder
    model = AutoencoderKL(
        in_channels=config.data.num_channels,
        out_channels=config.data.num_channels,
        z_channels=m.z_channels,
        block_out_channels=tuple(m.block_out_channels),
        layers_per_block=m.layers_per_block,
        norm_num_groups=m.norm_num_groups,
    )
    size = config.data.image_size
    x = jax.ShapeDtypeStruct((1, size, size, config.data.num_channels), jnp.float32)
    variables = jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x, sample_posterior=False), x
    )
    mean, _ = jax.eval_shape(functools.partial(model.apply, method=model.encode), variables, x)
    chex.assert_shape(mean, (1, 8, 8, 4))
    assert config.model.name == "autoencoder_kl"
    assert config.training.kl_weight == autoencoder_losses.DEFAULT_KL_WEIGHT


# --- The adversarial term ------------------------------------------------------------------------


def test_patch_discriminator_has_the_reference_size():
    # pix2pix's NLayerDiscriminator(ndf=64, n_layers=3): 2,765,633 parameters, 30x30 patches at 256.
    disc = PatchDiscriminator()
    x = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)
    variables = jax.eval_shape(disc.init, jax.random.key(0), x)
    assert count_params(variables) == 2_765_633
    chex.assert_shape(jax.eval_shape(disc.apply, variables, x), (2, 30, 30, 1))


def test_hinge_losses_and_adaptive_weight():
    real = jnp.array([[2.0, 0.5], [-1.0, 1.0]])[:, :, None, None]  # [B, 2, 1, 1]
    fake = jnp.array([[-2.0, 0.0], [1.0, -0.5]])[:, :, None, None]
    # relu(1 - real) = [[0, .5], [2, 0]]; relu(1 + fake) = [[0, 1], [2, .5]].
    np.testing.assert_allclose(
        autoencoder_losses.hinge_discriminator_loss(real, fake),
        [0.5 * (0.25 + 0.5), 0.5 * (1 + 1.25)],
    )
    np.testing.assert_allclose(autoencoder_losses.generator_adversarial_loss(fake), [1.0, -0.25])
    np.testing.assert_allclose(
        autoencoder_losses.adaptive_weight(jnp.array([3.0, 4.0]), jnp.array([0.0, 2.0])), 5 / 2.0001
    )
    assert autoencoder_losses.adaptive_weight(jnp.ones(2), jnp.zeros(2)) == 1e4


class _ToyAutoencoder(nn.Module):
    """1x1 convs with AutoencoderKL's call signature: a cheap stand-in for the GAN step's logic."""

    @nn.compact
    def __call__(self, x, key=None, sample_posterior=True):
        mean, logvar = jnp.split(nn.Conv(4, (1, 1), name="encoder")(x), 2, axis=-1)
        z = (
            mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
            if sample_posterior
            else mean
        )
        return nn.Conv(x.shape[-1], (1, 1), name="conv_out")(z), mean, logvar


def test_gan_step_is_the_plain_step_during_warmup_then_trains_the_discriminator():
    model, disc = _ToyAutoencoder(), PatchDiscriminator(ndf=4, num_layers=1, norm_num_groups=4)
    images = jnp.asarray(load_digits().images[:4, :, :, None] / 8.0 - 1.0, jnp.float32)
    init = jax.jit(autoencoder_task.init_gan_params, static_argnums=(1, 2, 3))
    params = init(jax.random.key(0, impl="rbg"), model, disc, (8, 8, 1))
    make_state = lambda p: TrainState.create(p, optax.adam(1e-2), (), jax.random.key(1))
    gan_state, plain_state = make_state(params), make_state(params["autoencoder"])
    batch = {"image": images}

    @jax.jit
    @chex.assert_max_traces(n=1)
    def gan_step(state):
        return autoencoder_task.gan_train_step(
            state,
            batch,
            model=model,
            discriminator=disc,
            disc_start=2,
            last_layer=("conv_out", "kernel"),
        )

    gan_state, metrics = gan_step(gan_state)
    plain_step = functools.partial(autoencoder_task.train_step, model=model)
    plain_state, plain_metrics = jax.jit(plain_step)(plain_state, batch)
    # Warm-up: the autoencoder takes the plain step; the discriminator gets no gradient.
    chex.assert_trees_all_close(gan_state.params["autoencoder"], plain_state.params, atol=1e-6)
    chex.assert_trees_all_equal(gan_state.params["discriminator"], params["discriminator"])
    np.testing.assert_allclose(metrics["loss"], plain_metrics["loss"], rtol=1e-6)
    assert float(metrics["d_loss"]) == 0.0 and float(metrics["d_weight"]) > 0.0

    for _ in range(2):  # Steps 1 and 2; the discriminator starts at step 2.
        gan_state, metrics = gan_step(gan_state)
    chex.assert_tree_all_finite(metrics)
    assert float(metrics["d_loss"]) > 0.0
    moved = jax.tree.map(
        lambda a, b: bool(np.any(a != b)),
        gan_state.params["discriminator"],
        params["discriminator"],
    )
    # (conv_out's bias has no gradient while every logit lies inside the hinge's margin.)
    assert moved["conv_0"]["kernel"] and moved["conv_out"]["kernel"], moved


# --- The GAN in the main job ----------------------------------------------------------------------


def _tiny_gan_config(data_dir, num_steps):
    """configs/digits_autoencoder_gan.py on 16x16 images (f = 2), the discriminator from step 2."""
    config = digits_autoencoder_gan.get_config()
    config.data.data_dir = data_dir
    config.data.image_size = 16
    config.model.autoencoder.block_out_channels = (8, 8)
    config.model.autoencoder.norm_num_groups = 4
    config.model.discriminator.ndf = 4
    config.training.update(
        num_steps=num_steps, disc_start=2, warmup_steps=1, checkpoint_every=2, log_every=1
    )
    config.eval.update(batch_size=120, num_bpd_examples=120)
    return config


def test_gan_run_resumes_past_disc_start_and_latent_diffusion_loads_its_autoencoder(
    data_dir, tmp_path, latent_config
):
    workdir = str(tmp_path / "gan")
    devices = jax.devices()[:2]  # Sharded over two: eight fake devices compile far slower.
    _, state_half, _ = train.train(_tiny_gan_config(data_dir, 2), workdir, devices)
    _, state, _ = train.train(_tiny_gan_config(data_dir, 4), workdir, devices)  # Resumes.
    assert set(state.params) == {"autoencoder", "discriminator"} and int(state.step) == 4
    # Steps 0 and 1 are the warm-up; the resumed steps 2 and 3 train the discriminator.
    moved = jax.tree.map(
        lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
        jax.device_get(state_half.params["discriminator"]),
        jax.device_get(state.params["discriminator"]),
    )
    assert moved["conv_0"]["kernel"], moved
    results = evaluate.evaluate_checkpoint(_tiny_gan_config(data_dir, 4), workdir)
    assert np.isfinite(results["test/psnr"]) and results["latent/scale"] > 0
    config = latent_config()
    config.latent.autoencoder_workdir = workdir
    latent = latents.load(config, sharding.create_mesh())
    assert latent.scale == pytest.approx(results["latent/scale"])
    chex.assert_trees_all_equal(
        jax.device_get(latent.params), jax.device_get(state.ema_params[0]["autoencoder"])
    )
