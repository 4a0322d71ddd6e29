"""Tests for diffax.classifier_guidance and diffax.models.classifier: the noisy classifier and
guidance."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits, digits_classifier, imagenet64_classifier
from diffax import (
    build,
    classifier_guidance,
    diffusion,
    models,
    sampling,
    schedules,
    solvers,
    tasks,
)
from diffax import timestep_sampler as timestep_sampler_lib
from diffax.diffusion import GaussianDiffusion
from diffax.models import count_params
from diffax.models.classifier import NoisyClassifier
from diffax.tasks import classifier as classifier_task
from diffax.train_state import TrainState

# A tiny two-level classifier: 8x8 -> 4x4, attention at 4x4, 3 classes.
TINY = dict(ch=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,))
NUM_CLASSES = 3


def _build(config) -> NoisyClassifier:
    """The builder proposed for build.MODELS["noisy_classifier"] (config -> module)."""
    m = config.model.classifier
    return NoisyClassifier(
        num_classes=config.data.num_classes,
        ch=m.ch,
        channel_mult=tuple(m.channel_mult),
        num_res_blocks=m.num_res_blocks,
        attention_resolutions=tuple(m.attention_resolutions),
        num_heads=m.num_heads,
        num_head_channels=m.num_head_channels,
        dropout=m.dropout,
        resblock_updown=m.resblock_updown,
        use_scale_shift_norm=m.use_scale_shift_norm,
        dtype=jnp.dtype(config.model.dtype),
        remat=config.model.remat,
    )


def _process(num_timesteps=20, schedule="cosine", **kwargs) -> GaussianDiffusion:
    betas = schedules.get_named_beta_schedule(schedule, num_timesteps)
    return GaussianDiffusion.create(betas, **kwargs)


def _perturb(params, scale=0.05):
    """Adds noise to every leaf, so the zero-initialised layers stop masking the network."""
    rng = np.random.default_rng(123)
    return jax.tree_util.tree_map(
        lambda leaf: np.asarray(leaf) + scale * rng.standard_normal(leaf.shape, np.float32), params
    )


# --- The network ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_logits_shape_and_float32(dtype):
    model = NoisyClassifier(num_classes=NUM_CLASSES, dtype=dtype, resblock_updown=True, **TINY)
    x, t = jnp.zeros((5, 8, 8, 1)), jnp.zeros((5,), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x, t)
    logits = jax.eval_shape(model.apply, variables, x, t)
    chex.assert_shape(logits, (5, NUM_CLASSES))
    assert logits.dtype == jnp.float32


def _conv(kernel, c_in, c_out):
    return kernel * kernel * c_in * c_out + c_out


def _hand_count(ch, mult, num_res, attn_res, size, c_in, classes, updown, scale_shift, conv_res):
    """Counts the classifier's parameters from its layer list, independently of flax."""

    def res(a, b):
        skip = a * b + b if a != b else 0
        emb_out = 2 * b if scale_shift else b
        return 2 * a + _conv(3, a, b) + emb * emb_out + emb_out + 2 * b + _conv(3, b, b) + skip

    def attn(c):
        return 2 * c + (c * 3 * c + 3 * c) + (c * c + c)

    emb = 4 * ch
    total = (ch * emb + emb) + (emb * emb + emb)  # Two time-embedding layers.
    channels = int(mult[0] * ch)
    total += _conv(3, c_in, channels)
    resolution = size
    for level, m in enumerate(mult):
        for _ in range(num_res):
            total += res(channels, ch * m)
            channels = ch * m
            if resolution in attn_res:
                total += attn(channels)
        if level != len(mult) - 1:
            total += (
                res(channels, channels) if updown else (_conv(3, channels, channels) * conv_res)
            )
            resolution //= 2
    total += 2 * res(channels, channels) + attn(channels)  # Middle block.
    total += 2 * channels  # Output GroupNorm.
    # Attention pool: positional embedding over H*W + 1 tokens, qkv, projection to the logits.
    total += (resolution**2 + 1) * channels + (channels * 3 * channels + 3 * channels)
    return total + channels * classes + classes


@pytest.mark.parametrize(
    "extra",
    [
        dict(resblock_updown=False, use_scale_shift_norm=False, conv_resample=True),
        dict(resblock_updown=True, use_scale_shift_norm=True, conv_resample=True),
        dict(resblock_updown=False, use_scale_shift_norm=True, conv_resample=False),
    ],
)
def test_param_count_matches_hand_formula(extra):
    model = NoisyClassifier(num_classes=NUM_CLASSES, **TINY, **extra)
    x, t = jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), x, t)["params"]
    expected = _hand_count(
        32, (1, 2), 1, (4,), 8, 1, NUM_CLASSES,
        extra["resblock_updown"], extra["use_scale_shift_norm"], extra["conv_resample"],
    )  # fmt: skip
    assert count_params(params) == expected


def test_digits_classifier_config_param_count_and_process():
    config = digits_classifier.get_config()
    model = _build(config)
    m = config.model.classifier
    x = jnp.zeros((1, config.data.image_size, config.data.image_size, config.data.num_channels))
    params = jax.eval_shape(model.init, jax.random.key(0), x, jnp.zeros((1,), jnp.int32))
    expected = _hand_count(
        m.ch, m.channel_mult, m.num_res_blocks, m.attention_resolutions, config.data.image_size,
        config.data.num_channels, config.data.num_classes, m.resblock_updown,
        m.use_scale_shift_norm, True,
    )  # fmt: skip
    assert count_params(params["params"]) == expected
    # The guided digits model's timesteps must mean the same noise levels to the classifier.
    assert config.diffusion.to_dict() == digits.get_config().diffusion.to_dict()
    assert config.model.name == "noisy_classifier" and not config.model.class_cond
    assert build.num_classes(config) == 0  # Initialised without labels.


def test_imagenet64_classifier_config_builds_abstractly():
    config = imagenet64_classifier.get_config()
    model = _build(config)
    x = jnp.zeros((1, config.data.image_size, config.data.image_size, config.data.num_channels))
    variables = jax.eval_shape(model.init, jax.random.key(0), x, jnp.zeros((1,), jnp.int32))
    logits = jax.eval_shape(model.apply, variables, x, jnp.zeros((1,), jnp.int32))
    chex.assert_shape(logits, (1, 1000))
    # The attention pool sits at 8x8 (the paper's "attention pool at the 8x8 layer").
    pool = variables["params"]["pool"]["positional_embedding"]
    assert pool.shape[0] == 8 * 8 + 1
    # 65.4M; the paper's classifier table lists a model size of 65M for ImageNet 64.
    assert 64.5e6 < count_params(variables["params"]) < 65.5e6


@pytest.fixture(scope="module")
def tiny_classifier():
    """(model, perturbed params) of the tiny classifier."""
    model = NoisyClassifier(num_classes=NUM_CLASSES, num_head_channels=16, **TINY)
    x, t = jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), x, t)["params"]
    return model, _perturb(params)


def test_classifier_ignores_labels_but_not_timesteps(tiny_classifier):
    model, params = tiny_classifier
    apply = jax.jit(model.apply)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    t = jnp.array([3, 15])
    logits = apply({"params": params}, x, t, None)
    np.testing.assert_array_equal(apply({"params": params}, x, t, jnp.array([0, 1])), logits)
    np.testing.assert_array_equal(apply({"params": params}, x, t, jnp.array([2, 2])), logits)
    assert not np.allclose(apply({"params": params}, x, t + 1, None), logits)


# --- Guidance gradients --------------------------------------------------------------------------


def test_guidance_fn_matches_finite_differences(tiny_classifier):
    model, params = tiny_classifier
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    t, labels = jnp.array([3, 15]), jnp.array([0, 2])
    grad = np.asarray(jax.jit(models.guidance_fn(model, params, labels))(x, t))
    chex.assert_shape(grad, x.shape)

    @jax.jit
    def log_probs(x):  # [B] log p(labels | x) per example
        logits = model.apply({"params": params}, x, t)
        return jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]

    rng = np.random.default_rng(0)
    coords = [np.unravel_index(np.argmax(np.abs(grad[b])), grad[b].shape) for b in range(2)]
    coords = [(b, *c) for b, c in enumerate(coords)]
    coords += [(int(rng.integers(2)), *rng.integers(0, 8, 2), 0) for _ in range(3)]
    eps = 1e-2
    x_np = np.asarray(x)
    for b, i, j, c in coords:
        plus, minus = x_np.copy(), x_np.copy()
        plus[b, i, j, c] += eps
        minus[b, i, j, c] -= eps
        f_plus, f_minus = np.asarray(log_probs(plus)), np.asarray(log_probs(minus))
        fd = (f_plus[b] - f_minus[b]) / (2 * eps)
        np.testing.assert_allclose(grad[b, i, j, c], fd, rtol=2e-2, atol=2e-3)
        # The other example's log-probability does not move: the batch-sum gradient is exact.
        np.testing.assert_allclose(f_plus[1 - b], f_minus[1 - b], atol=1e-5)
    assert np.abs(grad).max() > 1e-2  # The check above is not vacuous.


class GaussianBayesClassifier(nn.Module):
    """The exact p(y | x_t) of 1-D class-conditional data x0 | y ~ N(mu_y, s_y^2), prior pi.

    x_t | y ~ N(alpha mu_y, alpha^2 s_y^2 + sigma^2) (alpha, sigma at timestep t); logits are
    log pi_y + log N(x_t; ...), Bayes' rule up to the softmax. Called like NoisyClassifier.
    """

    d: GaussianDiffusion
    mus: tuple[float, ...]
    stds: tuple[float, ...]
    priors: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.mus)

    def __call__(self, x, t, y=None, *, train=False):
        alpha = self.d.sqrt_alphas_cumprod[t][:, None]  # [B, 1]
        sigma = self.d.sqrt_one_minus_alphas_cumprod[t][:, None]
        mean = alpha * jnp.array(self.mus)  # [B, K]
        var = alpha**2 * jnp.array(self.stds) ** 2 + sigma**2
        x = x.reshape(x.shape[0], 1)
        return (
            jnp.log(jnp.array(self.priors))
            - 0.5 * jnp.log(2 * jnp.pi * var)
            - (x - mean) ** 2 / (2 * var)
        )


MUS, STDS, PRIORS = (-1.0, 0.5, 2.0), (0.3, 0.5, 0.2), (0.2, 0.5, 0.3)


def _closed_form_grad(d, x, t, labels):
    """grad_x log p(y | x_t) = -(x - m_y) / v_y + sum_k p(k | x) (x - m_k) / v_k, in float64."""
    abar = np.asarray(d.alphas_cumprod, np.float64)[t][:, None]
    mean = np.sqrt(abar) * np.array(MUS)  # [B, K]
    var = abar * np.array(STDS) ** 2 + (1 - abar)
    x = np.asarray(x, np.float64).reshape(-1, 1)
    log_joint = np.log(PRIORS) - 0.5 * np.log(2 * np.pi * var) - (x - mean) ** 2 / (2 * var)
    post = np.exp(log_joint - log_joint.max(-1, keepdims=True))
    post /= post.sum(-1, keepdims=True)
    score_k = -(x - mean) / var  # [B, K], grad_x log p(x | k)
    rows = np.arange(len(labels))
    return score_k[rows, labels] - np.sum(post * score_k, axis=-1)


def test_guidance_fn_gives_the_gaussian_closed_form():
    d = _process(50)
    model = GaussianBayesClassifier(d, MUS, STDS, PRIORS)
    x = jnp.linspace(-3.0, 3.0, 12).reshape(12, 1, 1, 1)
    t = jnp.array([0, 5, 10, 20, 30, 40, 49, 25, 15, 3, 8, 45])
    labels = jnp.array([0, 1, 2] * 4)
    grad = models.guidance_fn(model, {}, labels)(x, t)
    chex.assert_shape(grad, x.shape)
    expected = _closed_form_grad(d, x, np.asarray(t), np.asarray(labels))
    np.testing.assert_allclose(np.asarray(grad)[:, 0, 0, 0], expected, rtol=1e-4, atol=1e-4)


def _mixture_eps(d):
    """The exact eps-model of the Gaussian mixture: eps = -sigma * grad_x log p(x_t)."""

    def model_fn(x, t):
        alpha = d.sqrt_alphas_cumprod[t][:, None]
        sigma = d.sqrt_one_minus_alphas_cumprod[t][:, None]
        mean = alpha * jnp.array(MUS)
        var = alpha**2 * jnp.array(STDS) ** 2 + sigma**2
        flat = x.reshape(x.shape[0], 1)
        log_joint = jnp.log(jnp.array(PRIORS)) - 0.5 * jnp.log(var) - (flat - mean) ** 2 / (2 * var)
        score = jnp.sum(jax.nn.softmax(log_joint, -1) * (-(flat - mean) / var), axis=-1)
        return (-sigma[:, 0] * score).reshape(x.shape)

    return model_fn


def test_guided_ddim_with_exact_models_samples_the_class_conditional():
    # Exact eps and exact classifier at scale 1: eps' = -sigma grad log p(x_t | y), so the DDIM
    # ODE (inside lax.scan) carries N(0, 1) to N(mu_y, s_y^2).
    d = _process(100)
    label = 2
    model = GaussianBayesClassifier(d, MUS, STDS, PRIORS)
    guide = models.guidance_fn(model, {}, jnp.full((4000,), label))
    guided = classifier_guidance.guided_model_fn(_mixture_eps(d), guide, d, 1.0)
    run = jax.jit(lambda key: sampling.ddim_sample(d, guided, (4000, 1, 1, 1), key, eta=0.0,
                                                   clip_denoised=False)["sample"])  # fmt: skip
    samples = np.asarray(run(jax.random.key(0))).ravel()
    np.testing.assert_allclose(samples.mean(), MUS[label], atol=0.03)
    np.testing.assert_allclose(samples.std(), STDS[label], rtol=0.1)


# --- Guided model_fn and the guided ancestral step -----------------------------------------------


def _toy_model_fn(x, t):
    """A smooth stand-in network [B, H, W, 2C] (mean half, variance half), depending on t."""
    tt = t.astype(jnp.float32).reshape(-1, 1, 1, 1)
    return jnp.concatenate([jnp.tanh(x) + 0.01 * tt, jnp.cos(x) * 0.5], axis=-1)


def _toy_guidance(x, t):
    return jnp.sin(3.0 * x) + 0.1 * t.astype(x.dtype).reshape(-1, 1, 1, 1)


def _model_for(d):
    if d.learn_sigma:
        return _toy_model_fn
    return lambda x, t: _toy_model_fn(x, t)[..., : x.shape[-1]]


@pytest.mark.parametrize("var_type", ["fixed_large", "learned_range"])
def test_guided_model_fn_shifts_eps_by_scaled_gradient(var_type):
    d = _process(20, var_type=var_type)
    model_fn = _model_for(d)
    x = jax.random.normal(jax.random.key(3), (4, 4, 4, 2))
    t = jnp.array([0, 5, 12, 19])
    unguided = model_fn(x, t)
    same = classifier_guidance.guided_model_fn(model_fn, _toy_guidance, d, 0)
    np.testing.assert_array_equal(same(x, t), unguided)  # Python 0: the unguided function
    zero = classifier_guidance.guided_model_fn(model_fn, _toy_guidance, d, 0.0)
    np.testing.assert_array_equal(zero(x, t), unguided)
    scale = 2.5
    guided = classifier_guidance.guided_model_fn(model_fn, _toy_guidance, d, scale)(x, t)
    chex.assert_shape(guided, unguided.shape)
    sigma = d.sqrt_one_minus_alphas_cumprod[t].reshape(-1, 1, 1, 1)
    expected = unguided[..., :2] - scale * sigma * _toy_guidance(x, t)
    np.testing.assert_allclose(guided[..., :2], expected, rtol=1e-6, atol=1e-6)
    if d.learn_sigma:
        np.testing.assert_array_equal(guided[..., 2:], unguided[..., 2:])


def test_guided_model_fn_on_a_respaced_process_uses_original_noise_levels():
    d = _process(20)
    respaced = d.respace([0, 4, 9, 14, 19])
    x = jax.random.normal(jax.random.key(4), (2, 4, 4, 1))
    model_t = respaced.timestep_map[jnp.array([1, 3])]  # what a sampler on `respaced` passes
    model_fn = _model_for(d)
    for process in (d, respaced):  # the training process or the one being sampled
        guided = classifier_guidance.guided_model_fn(model_fn, _toy_guidance, process, 1.5)(
            x, model_t
        )
        sigma = d.sqrt_one_minus_alphas_cumprod[model_t].reshape(-1, 1, 1, 1)
        expected = model_fn(x, model_t) - 1.5 * sigma * _toy_guidance(x, model_t)
        np.testing.assert_allclose(guided, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mean_type", ["x0", "v"])
def test_guided_model_fn_x0_and_v_imply_the_shifted_eps(mean_type):
    d = _process(20, mean_type=mean_type)
    model_fn = _model_for(d)
    x = jax.random.normal(jax.random.key(5), (3, 4, 4, 1))
    t = jnp.array([1, 10, 18])
    alpha = d.sqrt_alphas_cumprod[t].reshape(-1, 1, 1, 1)
    sigma = d.sqrt_one_minus_alphas_cumprod[t].reshape(-1, 1, 1, 1)

    def implied_eps(output):
        if mean_type == "x0":
            return (x - alpha * output) / sigma
        return sigma * x + alpha * output  # v

    guided = classifier_guidance.guided_model_fn(model_fn, _toy_guidance, d, 2.0)(x, t)
    expected = implied_eps(model_fn(x, t)) - 2.0 * sigma * _toy_guidance(x, t)
    np.testing.assert_allclose(implied_eps(guided), expected, rtol=1e-4, atol=1e-4)


def test_guided_model_fn_agrees_with_the_solvers_guidance_argument():
    d = _process(20)
    grid = solvers.grid_from_discrete(d, [19, 12, 6, 0])
    model_fn = _model_for(d)
    x = jax.random.normal(jax.random.key(6), (2, 4, 4, 1))
    scale = 3.0
    by_argument = solvers.denoiser(
        model_fn, grid, "eps", False, guidance_fn=_toy_guidance, guidance_scale=scale
    )
    wrapped = classifier_guidance.guided_model_fn(model_fn, _toy_guidance, d, scale)
    by_wrapper = solvers.denoiser(wrapped, grid, "eps", False)
    for i in range(grid.num_steps):
        for a, b in zip(by_argument(x, i), by_wrapper(x, i), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large", "learned_range"])
def test_guided_p_sample_is_p_sample_at_zero_and_shifts_the_mean_by_variance_times_grad(var_type):
    d = _process(20, var_type=var_type)
    model_fn = _model_for(d)
    x = jax.random.normal(jax.random.key(7), (4, 4, 4, 1))
    noise = jax.random.normal(jax.random.key(8), x.shape)
    t = jnp.array([0, 3, 11, 19])
    reference = sampling.p_sample(d, model_fn, x, t, noise)
    at_zero = sampling.p_sample(
        d, model_fn, x, t, noise, guidance_fn=_toy_guidance, guidance_scale=0
    )
    chex.assert_trees_all_equal(at_zero, reference)
    traced_zero = sampling.p_sample(
        d, model_fn, x, t, noise, guidance_fn=_toy_guidance, guidance_scale=jnp.float32(0.0)
    )
    chex.assert_trees_all_close(traced_zero, reference, atol=1e-6)

    scale = 2.0
    guided = sampling.p_sample(
        d, model_fn, x, t, noise, guidance_fn=_toy_guidance, guidance_scale=scale
    )
    out = diffusion.p_mean_variance(d, model_fn(x, d.timestep_map[t]), x, t, True)
    shift = scale * out["variance"] * _toy_guidance(x, d.timestep_map[t])  # Algorithm 1
    np.testing.assert_allclose(guided["sample"] - reference["sample"], shift, atol=1e-5)
    np.testing.assert_array_equal(guided["pred_x0"], reference["pred_x0"])


def test_eps_shift_moves_the_ddpm_mean_by_beta_over_sqrt_alpha_not_sigma():
    # The documented difference: unclipped, eps' = eps - s sqrt(1 - abar) g moves the posterior
    # mean by s beta_t / sqrt(alpha_t) g, where Algorithm 1 moves it by s Sigma_t g.
    d = _process(20, var_type="fixed_small")
    model_fn = _model_for(d)
    x = jax.random.normal(jax.random.key(9), (3, 4, 4, 1))
    noise = jnp.zeros_like(x)
    t = jnp.array([1, 8, 19])
    scale = 1.5
    guided = classifier_guidance.guided_model_fn(model_fn, _toy_guidance, d, scale)
    moved = sampling.p_sample(d, guided, x, t, noise, clip_denoised=False)["sample"]
    base = sampling.p_sample(d, model_fn, x, t, noise, clip_denoised=False)["sample"]
    beta = d.betas[t].reshape(-1, 1, 1, 1)
    expected = scale * beta / jnp.sqrt(1.0 - beta) * _toy_guidance(x, d.timestep_map[t])
    np.testing.assert_allclose(moved - base, expected, rtol=1e-3, atol=1e-5)


# --- Training ------------------------------------------------------------------------------------


def test_train_step_learns_two_classes_and_traces_once():
    config = digits_classifier.get_config()
    config.training.learning_rate = 2e-3
    config.training.warmup_steps = 0
    d = _process(20)
    model = NoisyClassifier(
        num_classes=2, ch=32, channel_mult=(1,), num_res_blocks=1, attention_resolutions=()
    )
    x = jnp.zeros((1, 4, 4, 1))
    params = jax.jit(model.init)(jax.random.key(0), x, jnp.zeros((1,), jnp.int32))["params"]
    sampler_state = timestep_sampler_lib.loss_second_moment_init(d.num_timesteps)
    state = TrainState.create(
        params, tasks.create_optimizer(config), (0.99,), jax.random.PRNGKey(1), sampler_state
    )

    rng = np.random.default_rng(0)

    def make_batch(size):
        # Two classes told apart by their mean intensity: -0.5 or +0.5, plus pixel noise.
        labels = np.arange(size) % 2
        images = (labels - 0.5).reshape(-1, 1, 1, 1) + 0.2 * rng.standard_normal((size, 4, 4, 1))
        return {"image": jnp.asarray(images, jnp.float32), "label": jnp.asarray(labels, jnp.int32)}

    eval_batch = make_batch(64)
    eval_t = jnp.asarray(np.arange(64) % 3, jnp.int32)  # Small t: the classes stay separable.
    eval_noise = jax.random.normal(jax.random.key(2), eval_batch["image"].shape)

    @jax.jit
    def evaluate(params):
        logits_fn = lambda x, t: model.apply({"params": params}, x, t)
        terms = classifier_guidance.classifier_loss(
            d, logits_fn, eval_batch["image"], eval_batch["label"], eval_t, eval_noise
        )
        return jnp.mean(terms["loss"]), jnp.mean(terms["accuracy"])

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, batch):
        return classifier_task.train_step(state, batch, model=model, process=d)

    loss_before, _ = evaluate(state.params)
    for _ in range(30):
        state, metrics = step(state, make_batch(32))
    loss_after, accuracy_after = evaluate(state.params)

    assert set(metrics) == {"loss", "accuracy", "grad_norm", "skipped", "consecutive_skips"}
    chex.assert_tree_all_finite(metrics)
    assert int(state.step) == 30 and int(metrics["skipped"]) == 0
    chex.assert_trees_all_equal(state.sampler_state, sampler_state)
    assert float(loss_after) < 0.5 * float(loss_before), (loss_before, loss_after)
    assert float(accuracy_after) > 0.9, accuracy_after


def test_classifier_loss_is_cross_entropy_at_the_mapped_timestep():
    d = _process(20).respace([0, 7, 19])
    seen = {}

    def logits_fn(x_t, timesteps):
        seen["x_t"], seen["t"] = x_t, timesteps
        return jnp.stack([jnp.mean(x_t, axis=(1, 2, 3)), -jnp.mean(x_t, axis=(1, 2, 3))], -1)

    x0 = jax.random.normal(jax.random.key(10), (4, 2, 2, 1))
    noise = jax.random.normal(jax.random.key(11), x0.shape)
    t, labels = jnp.array([0, 1, 2, 1]), jnp.array([0, 1, 1, 0])
    terms = classifier_guidance.classifier_loss(d, logits_fn, x0, labels, t, noise)
    np.testing.assert_array_equal(seen["t"], jnp.array([0, 7, 19, 7]))
    chex.assert_trees_all_close(seen["x_t"], diffusion.q_sample(d, x0, t, noise))
    logits = np.asarray(logits_fn(seen["x_t"], seen["t"]), np.float64)
    log_z = np.log(np.exp(logits).sum(-1))
    expected = log_z - logits[np.arange(4), np.asarray(labels)]
    np.testing.assert_allclose(terms["loss"], expected, rtol=1e-5)
    np.testing.assert_array_equal(terms["accuracy"], (logits.argmax(-1) == labels).astype(float))
