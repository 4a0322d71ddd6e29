"""Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", sec. 4): training a
noisy classifier p(y | x_t) and steering any sampler with grad_x log p(y | x_t).

Pure functions. The classifier is called like a diffusion model, `logits_fn(x_t, timesteps)`
-> [B, K] float32, with the timesteps of the original (training) process, `d.timestep_map[t]`:
the same numbers the samplers and `solvers.denoiser` pass to the diffusion model, so a classifier
trained on the diffusion model's process guides it at respaced steps too. Arrays are NHWC.

Two ways to guide (`diffax.tasks.classifier` trains the classifier and builds its guidance_fn):
- `guided_model_fn` shifts eps by -s sqrt(1 - abar_t) grad (eq. 14, Algorithm 2): a `model_fn`
  wrapper any sampler takes unchanged. `sampling.ddim_step(..., guidance_fn=...)` applies the
  shift after clipping x0, in guided-diffusion's order (what generate uses); `solvers.denoiser(...,
  guidance_fn=tasks.classifier.guidance_fn(...), guidance_scale=s)` applies the same shift
  inside the solvers.
- `p_sample_with_classifier_guidance` is Algorithm 1 exactly: the ancestral step with its mean
  moved by s Sigma grad.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from diffax import diffusion
from diffax.diffusion import GaussianDiffusion, ModelFn

# fn(x_t [B, H, W, C], model_t [B]) -> grad_x log p(y | x_t) [B, H, W, C]; solvers.GuidanceFn.
GuidanceFn = Callable[[jax.Array, jax.Array], jax.Array]
# fn(x_t [B, H, W, C], model_t [B]) -> logits [B, K].
LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


def _is_static_zero(value: Any) -> bool:
    """Returns whether value is a Python number equal to 0 (known at trace time)."""
    return isinstance(value, int | float) and value == 0


def classifier_loss(
    d: GaussianDiffusion,
    model_fn: LogitsFn,
    x0: jax.Array,
    labels: jax.Array,
    t: jax.Array,
    noise: jax.Array,
) -> dict[str, jax.Array]:
    """Returns {"loss": cross entropy in nats [B], "accuracy": 1.0 where argmax == label [B]}.

    The classifier sees x_t = q_sample(d, x0, t, noise) at timesteps d.timestep_map[t]; t [B] are
    indices 0..T-1 into d, labels [B] int in 0..K-1.
    """
    x_t = diffusion.q_sample(d, x0, t, noise)
    logits = model_fn(x_t, d.timestep_map[t]).astype(jnp.float32)  # [B, K]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    accuracy = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return {"loss": loss, "accuracy": accuracy}


def log_prob_grad_fn(logits_fn: LogitsFn, labels: jax.Array) -> GuidanceFn:
    """Returns fn(x_t, model_t) -> grad_x log softmax(logits_fn(x_t, model_t))[labels], like x_t.

    One `jax.grad` of the batch sum: exact per example as long as each example's logits depend on
    its own input only (true for the classifier in eval mode: GroupNorm is per example). Traceable,
    so it runs inside a `lax.scan` sampler. model_t [B] are original-process timesteps, as the
    samplers and `solvers.denoiser` pass them; labels [B] int.
    """

    def fn(x_t: jax.Array, model_t: jax.Array) -> jax.Array:
        def total_log_prob(x):
            log_probs = jax.nn.log_softmax(logits_fn(x, model_t).astype(jnp.float32), axis=-1)
            return jnp.sum(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))

        return jax.grad(total_log_prob)(x_t)

    return fn


def _alpha_sigma(d: GaussianDiffusion, model_t: jax.Array, x: jax.Array):
    """Returns (sqrt(abar), sqrt(1 - abar)) [B, 1, ..., 1] at original-process timesteps model_t.

    model_t must be entries of d.timestep_map (increasing), whose index is then found by search:
    d may be the training process (map = identity) or the respaced process being sampled.
    """
    model_t = jnp.broadcast_to(jnp.asarray(model_t, jnp.int32), x.shape[:1])  # [B]
    index = jnp.searchsorted(d.timestep_map, model_t)  # [B]
    return (
        diffusion.extract(d.sqrt_alphas_cumprod, index, x.ndim),
        diffusion.extract(d.sqrt_one_minus_alphas_cumprod, index, x.ndim),
    )


def guided_model_fn(
    model_fn: ModelFn, guidance_fn: GuidanceFn, d: GaussianDiffusion, scale: float
) -> ModelFn:
    """Returns the classifier-guided model_fn: eps' = eps - scale * sqrt(1 - abar_t) * grad.

    Dhariwal & Nichol eq. 14 / Algorithm 2: eps' is the score of p(x_t) p(y | x_t)^scale. For
    x0- and v-prediction the output is the x0 or v that goes with eps' at the same x_t (x0' = x0 +
    s sigma^2 / alpha grad, v' = v - s sigma / alpha grad, alpha^2 + sigma^2 = 1); with a learned
    variance (2C channels) the variance half is unchanged. abar_t is looked up in d at the
    original-process timestep the wrapper is called with (d: the training process, or the
    respaced one being sampled). A Python 0 scale returns model_fn itself: bit for bit unguided.

    For ancestral DDPM this is the paper's mean shift s Sigma grad (Algorithm 1) only
    approximately: with x0 unclipped the eps' mean moves by s beta_t / sqrt(alpha_t) grad, i.e.
    Sigma is replaced by beta_t / sqrt(1 - beta_t) (the fixed_large variance up to a factor
    1 + O(beta_t); for fixed_small it is (1 - abar_t) / (1 - abar_{t-1}) / sqrt(alpha_t) times
    Sigma, far above it near t = 0; a learned Sigma is ignored), and with clip_denoised the shift
    passes through the clipping of x0. `sampling.p_sample(..., guidance_fn=...)` does Algorithm 1.
    """
    if _is_static_zero(scale):
        return model_fn

    def guided(x_t: jax.Array, model_t: jax.Array) -> jax.Array:
        output = model_fn(x_t, model_t)
        channels = x_t.shape[-1]
        mean_output = output[..., :channels]
        alpha, sigma = _alpha_sigma(d, model_t, x_t)
        grad = guidance_fn(x_t, model_t).astype(mean_output.dtype)
        if d.mean_type == "eps":
            mean_output = mean_output - scale * sigma * grad
        elif d.mean_type == "x0":
            mean_output = mean_output + scale * sigma**2 / alpha * grad
        else:  # v = alpha eps - sigma x0
            mean_output = mean_output - scale * sigma / alpha * grad
        if d.learn_sigma:
            return jnp.concatenate([mean_output, output[..., channels:]], axis=-1)
        return mean_output

    return guided
