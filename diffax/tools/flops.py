"""Analytic U-Net FLOPs: conv/dense MACs read off the traced layers, attention by formula.

Convention: 1 multiply-accumulate (MAC) = 2 FLOPs; only matmul-like work is counted (convolutions,
dense layers, the two attention matmuls), as in the usual MFU accounting (e.g. PaLM, appendix B);
norms, activations and the softmax are left out. A 'same'-padded conv is counted over the whole
kernel at every output position, the work the hardware does. A training step costs 3x the forward
pass (forward + two backward matmuls per layer: input and weight gradients).
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffax import models
from diffax.models import dit, layers

TRAIN_STEP_MULTIPLIER = 3  # forward + backward (gradients w.r.t. activations and weights)


def conv_macs(output_shape: Sequence[int], kernel_size: Sequence[int], in_features: int) -> int:
    """Returns MACs of a conv: each output element [B, H', W', F] takes prod(kernel) x C_in."""
    return math.prod(output_shape) * math.prod(kernel_size) * in_features


def dense_macs(output_shape: Sequence[int], in_features: int) -> int:
    """Returns MACs of a dense layer: every output element [..., F] takes in_features MACs."""
    return math.prod(output_shape) * in_features


def attention_macs(batch: int, length: int, channels: int, heads: int) -> int:
    """Returns MACs of QK^T and AV: 2 x B x heads x L^2 x head_dim (projections are Dense)."""
    head_dim = channels // heads
    return 2 * batch * heads * length**2 * head_dim


def _count_interceptor(counts: dict[str, int]):
    """Returns a flax interceptor adding each Conv / Dense / attention call's MACs to counts."""

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name != "__call__":
            return out
        if isinstance(module, nn.Conv):
            groups = module.feature_group_count
            in_features = args[0].shape[-1] // groups
            counts["conv"] += conv_macs(out.shape, module.kernel_size, in_features)
        elif isinstance(module, nn.Dense):
            counts["dense"] += dense_macs(out.shape, args[0].shape[-1])
        elif isinstance(module, layers.AttentionBlock):
            batch, height, width, channels = args[0].shape
            heads = layers.attention_heads(channels, module.num_heads, module.num_head_channels)
            counts["attention"] += attention_macs(batch, height * width, channels, heads)
        elif isinstance(module, dit.SelfAttention):
            batch, length, hidden = args[0].shape
            counts["attention"] += attention_macs(batch, length, hidden, module.num_heads)
        return out

    return interceptor


def count_macs(fn: Callable[..., Any], *args: Any) -> dict[str, int]:
    """Returns MACs {"conv", "dense", "attention", "total"} of the flax layers fn(*args) calls.

    fn is traced abstractly with jax.eval_shape (args may be jax.ShapeDtypeStruct): nothing runs.
    """
    counts = {"conv": 0, "dense": 0, "attention": 0}
    with nn.intercept_methods(_count_interceptor(counts)):
        jax.eval_shape(fn, *args)
    counts["total"] = counts["conv"] + counts["dense"] + counts["attention"]
    return counts


def _abstract_inputs(model: nn.Module, image_shape: Sequence[int], batch_size: int):
    """Returns ShapeDtypeStructs (x [B, H, W, C], t [B], labels [B] or None) for the model."""
    x = jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    return x, t, labels if getattr(model, "num_classes", 0) else None


def _forward(model: nn.Module):
    """Returns forward(params, x, t, labels), the model as diffusion code calls it."""
    return lambda params, x, t, labels: models.model_fn(model, params, labels)(x, t)


def forward_macs(model: nn.Module, image_shape: Sequence[int], batch_size: int = 1) -> dict:
    """Returns forward-pass MACs {"conv", "dense", "attention", "total"} of the model on
    [batch_size, H, W, C], summed over the batch."""
    if hasattr(model, "remat"):
        model = model.clone(remat=False)  # The same layers either way; remat only re-runs them.
    x, t, labels = _abstract_inputs(model, image_shape, batch_size)
    params = jax.eval_shape(
        lambda x, t, labels: model.init(jax.random.PRNGKey(0), x, t, labels)["params"],
        x,
        t,
        labels,
    )
    return count_macs(_forward(model), params, x, t, labels)


def forward_flops_per_image(model: nn.Module, image_shape: Sequence[int]) -> int:
    """Returns analytic forward FLOPs (2 x MACs) of one image [H, W, C]."""
    return 2 * forward_macs(model, image_shape, batch_size=1)["total"]


def train_flops_per_image(model: nn.Module, image_shape: Sequence[int]) -> int:
    """Returns analytic FLOPs of one image in a training step: 3 x the forward FLOPs."""
    return TRAIN_STEP_MULTIPLIER * forward_flops_per_image(model, image_shape)


def sampling_flops(
    forward_per_image: float, steps: int, num_images: int, guidance: bool = False
) -> float:
    """Returns sampling FLOPs: forward FLOPs x steps x images, x2 with classifier-free guidance."""
    return forward_per_image * steps * num_images * (2 if guidance else 1)


def xla_cost(compiled: Any) -> dict[str, float]:
    """Returns {"flops", "bytes_accessed"} of a compiled executable's XLA cost analysis.

    For a sharded (SPMD) executable these are per device: the cost of one partition's program.
    """
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # Older JAX returned one dict per program.
        analysis = analysis[0]
    return {
        "flops": float(analysis["flops"]),
        "bytes_accessed": float(analysis.get("bytes accessed", float("nan"))),
    }


def xla_forward_flops_per_image(
    model: nn.Module, params: Any, image_shape: Sequence[int], batch_size: int = 1
) -> float:
    """Returns XLA's cost-analysis FLOPs of one compiled forward on [batch, H, W, C], per image.

    XLA also counts elementwise work (norms, activations, softmax) and skips the zero padding of
    convolutions, so it differs from the analytic count by a model-dependent few tens of percent.
    """
    x, t, labels = _abstract_inputs(model, image_shape, batch_size)
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    compiled = jax.jit(_forward(model)).lower(abstract, x, t, labels).compile()
    return xla_cost(compiled)["flops"] / batch_size


if __name__ == "__main__":  # A library, not a command: say so, and where its figures are printed.
    import sys

    usage = (
        "diffax.tools.flops is a library of FLOP counts (train_flops_per_image(model, shape), "
        "forward_flops_per_image, forward_macs); `python -m diffax.tools.benchmark "
        "--config=configs/digits.py` prints a config's FLOPs per image and its MFU."
    )
    if any(a in ("--help", "-h", "--helpfull") for a in sys.argv[1:]):
        print(__doc__.strip() + "\n\n" + usage)
        sys.exit(0)
    print(f"flops: error: {usage}", file=sys.stderr)
    sys.exit(1)
