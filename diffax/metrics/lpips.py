"""LPIPS v0.1, VGG16 (Zhang et al. 2018): the perceptual term of LDM's autoencoder loss.

d(x0, x1) = sum over the taps k of mean_{h,w} w_k . (n(f_k(x0)) - n(f_k(x1)))^2, where f_k are
VGG16's relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 activations of the scaled input
(x - shift) / scale, n divides each feature vector by its channel norm (+ 1e-10), and w_k are the
learned non-negative 1x1 "lin" layers. Images are NHWC in [-1, 1]; grey images are repeated to
three channels. The result is per example `[B]`, 0 for equal images.

Weights come from a local file only (.safetensors or .npz) with the official names and PyTorch
layouts: torchvision's vgg16 `features.N.weight` [O, I, 3, 3] and `features.N.bias` [O] for the 13
convs, and lpips' `lin0.model.1.weight` ... `lin4.model.1.weight` [1, C_k, 1, 1];
`python -m diffax.tools.convert_lpips` writes it from the two official torch files. The widths are
read from the file (VGG16's are (64, 128, 256, 512, 512)), so a reduced-width file of the same
layout loads too; other names in the file (torchvision's classifier) are ignored.
"""

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# torchvision vgg16 `features` indices of the convs, by stage; a tap follows each stage's last
# ReLU (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3), a 2x2 max pool precedes stages 2-5.
STAGES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
VGG16_WIDTHS = (64, 128, 256, 512, 512)
# LPIPS's ScalingLayer: ImageNet statistics in [-1, 1] units.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10  # lpips.normalize_tensor's.


def normalize_channels(h: jax.Array) -> jax.Array:
    """Returns h / (||h||_channels + 1e-10) of features `[..., C]` (lpips.normalize_tensor).

    Where a feature vector is all zero (dead ReLUs) the norm's gradient is taken as 0: sqrt'(0) is
    infinite and 0 * inf would make the whole train step's gradient NaN.
    """
    square = jnp.sum(jnp.square(h), axis=-1, keepdims=True)
    positive = square > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, square, 1.0)), 0.0)
    return h / (norm + EPS)


class LPIPS(nn.Module):
    """LPIPS v0.1 on VGG16 features; params {"features_N": {kernel, bias}, "lin_k": {kernel}}."""

    widths: tuple[int, ...] = VGG16_WIDTHS  # Conv widths of the five stages.

    def features(self, x: jax.Array) -> list[jax.Array]:
        """Returns the five channel-normalised taps of images `[B, H, W, 3]` in [-1, 1]."""
        h = (x - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)
        taps = []
        for s, (convs, width) in enumerate(zip(STAGES, self.widths, strict=True)):
            if s:
                h = nn.max_pool(h, (2, 2), strides=(2, 2))
            for n in convs:
                h = nn.relu(
                    nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), name=f"features_{n}")(h)
                )
            taps.append(normalize_channels(h))
        return taps

    @nn.compact
    def __call__(self, x0: jax.Array, x1: jax.Array) -> jax.Array:
        """Returns the LPIPS distance per example `[B]` of images `[B, H, W, C]`, C 1 or 3."""
        if x0.shape[-1] == 1:
            x0, x1 = (jnp.repeat(x, 3, axis=-1) for x in (x0, x1))
        batch = x0.shape[0]
        taps = self.features(jnp.concatenate([x0, x1]).astype(jnp.float32))
        total = jnp.zeros((batch,), jnp.float32)
        for k, tap in enumerate(taps):
            diff = jnp.square(tap[:batch] - tap[batch:])
            lin = nn.Conv(1, (1, 1), use_bias=False, name=f"lin_{k}")(diff)
            total = total + jnp.mean(lin, axis=(1, 2, 3))
        return total


def expected_shapes(widths: tuple[int, ...] = VGG16_WIDTHS) -> dict[str, tuple[int, ...]]:
    """Returns {official tensor name: PyTorch shape} of an LPIPS-VGG16 file of these widths."""
    shapes, channels = {}, 3
    for s, (convs, width) in enumerate(zip(STAGES, widths, strict=True)):
        for n in convs:
            shapes[f"features.{n}.weight"] = (width, channels, 3, 3)
            shapes[f"features.{n}.bias"] = (width,)
            channels = width
        shapes[f"lin{s}.model.1.weight"] = (1, width, 1, 1)
    return shapes


def _read(path: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LPIPS weights {path!r} do not exist.")
    try:
        if path.endswith(".npz"):
            with np.load(path) as f:
                return {k: f[k] for k in f.files}
        from safetensors.numpy import load_file

        return load_file(path)
    except Exception as error:  # noqa: BLE001 (any unreadable file gets the same sentence)
        raise ValueError(
            f"Cannot read LPIPS weights {path!r} as .npz or .safetensors ({error})."
        ) from None


def load_params(path: str) -> tuple[dict[str, Any], tuple[int, ...]]:
    """Returns (LPIPS params, widths) read from a .safetensors / .npz of the official names.

    Convs are mapped from OIHW to Flax's HWIO. Raises ValueError in one sentence naming the file
    and the offending tensors if names or shapes do not fit, or a lin weight is negative.
    """
    tensors = _read(path)
    first = [tensors.get(f"features.{convs[0]}.weight") for convs in STAGES]
    widths = tuple(int(w.shape[0]) if w is not None and w.ndim == 4 else 0 for w in first)
    wanted = expected_shapes(widths)
    missing = sorted(k for k in wanted if k not in tensors)
    wrong = sorted(
        f"{k} {tuple(tensors[k].shape)} (expected {wanted[k]})"
        for k in wanted
        if k in tensors and tuple(tensors[k].shape) != wanted[k]
    )
    if missing or wrong:
        problems = (["missing " + ", ".join(missing)] if missing else []) + (
            ["wrong shapes " + ", ".join(wrong)] if wrong else []
        )
        raise ValueError(
            f"LPIPS weights {path!r} do not fit LPIPS-VGG16 (torchvision features.N.weight/bias "
            f"and lpips linK.model.1.weight): {'; '.join(problems)}."
        )
    negative = [
        f"lin{k}.model.1.weight" for k in range(5) if (tensors[f"lin{k}.model.1.weight"] < 0).any()
    ]
    if negative:
        raise ValueError(
            f"LPIPS weights {path!r} have negative lin weights in {', '.join(negative)}; "
            "LPIPS's are non-negative (clamped in training)."
        )
    params = {}
    for k, convs in enumerate(STAGES):
        for n in convs:
            params[f"features_{n}"] = {
                "kernel": np.transpose(tensors[f"features.{n}.weight"], (2, 3, 1, 0)),
                "bias": tensors[f"features.{n}.bias"],
            }
        params[f"lin_{k}"] = {
            "kernel": np.transpose(tensors[f"lin{k}.model.1.weight"], (2, 3, 1, 0))
        }
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
    return params, widths


def save_tensors(tensors: dict[str, np.ndarray], path: str) -> None:
    """Writes official-name float32 tensors to path (.npz, else .safetensors)."""
    tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}
    if path.endswith(".npz"):
        np.savez(path, **tensors)
        return
    from safetensors.numpy import save_file

    save_file(tensors, path)


def distance_fn(path: str):
    """Returns fn(x0, x1) -> LPIPS per example `[B]` with the weights in path (loaded once)."""
    params, widths = load_params(path)
    model = LPIPS(widths=widths)
    return lambda x0, x1: model.apply({"params": params}, x0, x1)
