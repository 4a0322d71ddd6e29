"""Backbones, one module each, and the one way diffusion code calls them: `model_fn(x, t)`.

A backbone is a flax module called as `model.apply({"params": params}, x, t, y, train=...)` with
`x` [B, H, W, C], `t` [B] timesteps and `y` [B] labels or None; `diffax.build.MODELS` maps
`config.model.name` to the function that builds it from a config. A text-conditioned model
(`text_encoder.TextConditioned`) also takes `tokens=` [B, L], the captions as byte tokens; the
backbones themselves, and `text_encoder.ContextConditioned` (embeddings stored with the data),
take the encoded context as `context=`, `context_mask=`.
"""

import math
from typing import Any

import jax

from diffax.classifier_guidance import GuidanceFn, log_prob_grad_fn
from diffax.diffusion import ModelFn
from diffax.models import text_encoder


def count_params(params: Any) -> int:
    """Returns the number of scalars in a parameter pytree (arrays or `jax.ShapeDtypeStruct`s)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


def model_fn(
    model: Any,
    params: Any,
    labels: jax.Array | None = None,
    *,
    train: bool = False,
    dropout_rng: jax.Array | None = None,
    conditioning: dict[str, jax.Array] | None = None,
    tokens: jax.Array | None = None,
    context: dict[str, jax.Array] | None = None,
) -> ModelFn:
    """Returns `fn(x_t, timesteps) -> output` of the model with fixed params, labels [B] and
    caption tokens [B, L] or precomputed context {"context": [B, L, D], "context_mask": [B, L]}.

    labels are passed only to a class-conditional model (model.num_classes > 0); tokens only to
    a text-conditioned one, which reads None as the empty caption (the null context); context
    only to a `text_encoder.ContextConditioned` one (None: zero embeddings, all masked);
    conditioning holds further keyword inputs of the backbone (concat, aug_level: image
    conditioning); train=True
    enables dropout, drawn from dropout_rng.
    """
    y = labels if getattr(model, "num_classes", 0) else None
    rngs = {"dropout": dropout_rng} if train else None
    extra = dict(conditioning or {})
    if text_encoder.is_text_conditioned(model):
        extra["tokens"] = tokens
    elif tokens is not None:
        raise ValueError("Caption tokens were given to a model without text conditioning.")
    if text_encoder.is_context_conditioned(model):
        extra.update(context or {})
    elif context is not None:
        raise ValueError("A text context was given to a model without precomputed embeddings.")

    def fn(x_t: jax.Array, timesteps: jax.Array) -> jax.Array:
        return model.apply({"params": params}, x_t, timesteps, y, train=train, rngs=rngs, **extra)

    return fn


def guidance_fn(model: Any, params: Any, labels: jax.Array) -> GuidanceFn:
    """Returns fn(x_t, model_t) -> grad_x log p(labels | x_t) [B, H, W, C] of a NoisyClassifier.

    model_t [B] are original-process timesteps (as the solvers pass them); the classifier runs in
    eval mode (no dropout). Pass it to `solvers.denoiser(guidance_fn=...)` or `guided_model_fn`.
    """
    return log_prob_grad_fn(model_fn(model, params), labels)
