"""OpenAI's U-Net checkpoints (improved-diffusion, guided-diffusion) -> diffax parameters.

The published files of openai/improved-diffusion (Nichol & Dhariwal 2021) and
openai/guided-diffusion (Dhariwal & Nichol 2021: the ADM U-Nets, the noisy classifiers'
`EncoderUNetModel`, the upsamplers' `SuperResModel`) are plain state dicts. Their names, as facts
of that layout: `time_embed.0` / `.2`, `label_emb`, `input_blocks.k` (k = 0 the input conv; then
per level `num_res_blocks` entries [ResBlock, AttentionBlock?] and, except at the last level, a
downsampling entry), `middle_block.0-2`, `output_blocks.j` (per level from the bottom,
`num_res_blocks + 1` entries [ResBlock, AttentionBlock?, upsampling?]), `out.0` / `out.2`; a
ResBlock's `in_layers.0` / `.2`, `emb_layers.1`, `out_layers.0` / `.3`, `skip_connection`; an
AttentionBlock's `norm`, `qkv`, `proj_out` (1-D convs); a plain Downsample's `op`, Upsample's
`conv`; the classifier's attention pool `out.2.positional_embedding`, `.qkv_proj`, `.c_proj`.

The mapping is derived from the flax model (`unet.UNet`, `classifier.NoisyClassifier`): every
flax leaf has one expected torch name and shape, and a file that does not hold exactly those is
refused in one sentence naming the tensors, what the file holds and the config fields they depend
on. Layouts: conv OIHW -> HWIO, linear [out, in] and 1-D conv [out, in, 1] -> [in, out],
GroupNorm weight -> scale, the pool's positional embedding [C, L + 1] -> [L + 1, C]; float16
files become float32. The super-resolution model is the U-Net on [x_t, upsampled low-res]
(`concat_cond`), so its names are the U-Net's.

What a state dict cannot show: whether its attention splits q, k, v before heads
(`use_new_attention_order`) and whether the network read rescaled timesteps (improved-diffusion's
`rescale_timesteps`). Those come from the config (its `use_new_attention_order` and
`timestep_scale`); improved-diffusion only has the legacy order, which is checked.
"""

import re
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from diffax import weight_files
from diffax.models import classifier as classifier_model
from diffax.models import unet

SOURCES = ("guided-diffusion", "improved-diffusion")

_RES = {
    "in_norm": "in_layers.0",
    "in_conv": "in_layers.2",
    "emb_proj": "emb_layers.1",
    "out_norm": "out_layers.0",
    "out_conv": "out_layers.3",
    "skip": "skip_connection",
}
_ATTN = {"norm": "norm", "qkv": "qkv", "proj_out": "proj_out"}
_POOL = {"qkv": "qkv_proj", "proj_out": "c_proj"}
_LEAF = {"kernel": "weight", "bias": "bias", "scale": "weight", "embedding": "weight"}
_BLOCK = re.compile(r"^(down|up)_(\d+)_(res|attn)_(\d+)$")
_RESAMPLE = re.compile(r"^(down|up)_(\d+)_(downsample|upsample)$")


class NoCounterpart(KeyError):
    """A diffax module that OpenAI's checkpoints have no tensors for."""


def _module_prefix(
    module: str, inner: tuple[str, ...], num_res_blocks: int, levels: int, attention: set
) -> str:
    """Returns the torch module name of the diffax top-level module `module` (its sub-path
    `inner` decides a plain resampler's `op` / `conv`); NoCounterpart if it has none."""
    n = num_res_blocks
    fixed = {
        "time_embed_0": "time_embed.0",
        "time_embed_1": "time_embed.2",
        "label_embed": "label_emb",
        "input_conv": "input_blocks.0.0",
        "mid_res_0": "middle_block.0",
        "mid_attn": "middle_block.1",
        "mid_res_1": "middle_block.2",
        "out_norm": "out.0",
        "out_conv": "out.2",
        "pool": "out.2",
    }
    if module in fixed:
        return fixed[module]
    match = _BLOCK.match(module)
    if match:
        side, level, kind, i = (
            match.group(1),
            int(match.group(2)),
            match.group(3),
            int(match.group(4)),
        )
        index = 1 + level * (n + 1) + i if side == "down" else (levels - 1 - level) * (n + 1) + i
        blocks = "input_blocks" if side == "down" else "output_blocks"
        return f"{blocks}.{index}.{0 if kind == 'res' else 1}"
    match = _RESAMPLE.match(module)
    if match:
        level = int(match.group(2))
        plain = inner[:1] == ("conv",)  # Downsample / Upsample, not a residual block.
        if match.group(1) == "down":
            return f"input_blocks.{1 + level * (n + 1) + n}.0" + (".op" if plain else "")
        position = 2 if f"up_{level}_attn_{n}" in attention else 1
        index = (levels - 1 - level) * (n + 1) + n
        return f"output_blocks.{index}.{position}" + (".conv" if plain else "")
    raise NoCounterpart(module)


def torch_name(path: tuple[str, ...], num_res_blocks: int, levels: int, attention: set) -> str:
    """Returns OpenAI's tensor name of a diffax U-Net / classifier parameter path; NoCounterpart
    for a module their checkpoints lack (the augmentation-level embedding, text conditioning).

    `attention` holds the names of the model's attention modules (an upsampler's index in its
    output block depends on whether an attention block precedes it)."""
    module, inner, leaf = path[0], path[1:-1], path[-1]
    prefix = _module_prefix(module, inner, num_res_blocks, levels, attention)
    if module == "pool":
        if leaf == "positional_embedding":
            return f"{prefix}.positional_embedding"
        return f"{prefix}.{_POOL[inner[0]]}.{_LEAF[leaf]}"
    if _RESAMPLE.match(module) and inner[:1] == ("conv",):
        inner = ()
    elif module.startswith(("down_", "up_", "mid_")) and inner:
        table = _ATTN if "attn" in module else _RES
        if inner[0] not in table:
            raise NoCounterpart("/".join(path[:-1]))
        inner = (table[inner[0]], *inner[1:])
    elif inner:
        raise NoCounterpart("/".join(path[:-1]))
    return ".".join([prefix, *inner, _LEAF.get(leaf, leaf)])


def _is_conv1d(path: tuple[str, ...]) -> bool:
    """Returns whether a diffax Dense kernel is a 1-D conv [out, in, 1] in OpenAI's code."""
    return len(path) >= 2 and path[-2] in ("qkv", "proj_out")


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Returns the torch shape of a diffax leaf (HWIO -> OIHW, [in, out] -> [out, in(, 1)])."""
    if path[-1] == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if path[-1] == "kernel":
        return (shape[1], shape[0], 1) if _is_conv1d(path) else (shape[1], shape[0])
    if path[-1] == "positional_embedding":
        return (shape[1], shape[0])
    return tuple(shape)


def _to_flax(array: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    """Returns an OpenAI tensor in the layout of the diffax leaf `path`, as float32."""
    array = np.asarray(array, np.float32)
    if path[-1] == "kernel" and array.ndim == 4:
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
    if path[-1] == "kernel":
        return np.ascontiguousarray(array.reshape(array.shape[0], array.shape[1]).T)
    if path[-1] == "positional_embedding":
        return np.ascontiguousarray(array.T)
    return array


def section(model: Any) -> str:
    """Returns the config section of the model's hyperparameters."""
    return (
        "model.classifier" if isinstance(model, classifier_model.NoisyClassifier) else "model.unet"
    )


def _init_inputs(model: Any, image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """Returns abstract inputs for model.init: x, t, y and the image conditioning it takes."""
    spec = jax.ShapeDtypeStruct
    inputs = {"x": spec((1, *image_shape), jnp.float32), "t": spec((1,), jnp.int32)}
    is_unet = isinstance(model, unet.UNet)
    inputs["y"] = spec((1,), jnp.int32) if is_unet and model.num_classes else None
    if is_unet and model.concat_cond:
        inputs["concat"] = spec((1, *image_shape), jnp.float32)
    if is_unet and model.level_cond:
        inputs["aug_level"] = spec((1,), jnp.float32)
    return inputs


def expected_tensors(
    model: Any, image_shape: tuple[int, int, int]
) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """Returns {OpenAI name: (diffax path, torch shape)} of every parameter of a `unet.UNet` or
    `classifier.NoisyClassifier` for images `image_shape` = [H, W, C] (nothing is allocated);
    ValueError in one sentence naming the config field of a module the checkpoints lack."""
    inputs = _init_inputs(model, image_shape)

    def init(x, t, y=None, **extra):
        return model.init(jax.random.PRNGKey(0), x, t, y, **extra)

    shapes = jax.eval_shape(init, **inputs)["params"]
    flat = flax.traverse_util.flatten_dict(shapes)
    attention = {path[0] for path in flat if "_attn_" in path[0]}
    levels = len(model.channel_mult)
    expected = {}
    for path, leaf in flat.items():
        try:
            name = torch_name(path, model.num_res_blocks, levels, attention)
        except NoCounterpart:
            fix = {
                "aug_level_embed": "set super_resolution.level_cond=False (ADM's upsamplers do "
                "not embed an augmentation level)",
                "context_embed": "set model.text_cond=False",
            }.get(path[0], "set model.text_cond=False (they have no cross-attention)")
            raise ValueError(
                f"OpenAI's U-Net checkpoints have no {'/'.join(path[:-1])}: {fix}."
            ) from None
        expected[name] = (path, _torch_shape(path, leaf.shape))
    return expected


def _fields(names: list[str], sec: str) -> str:
    """Returns the config fields that decide the given OpenAI tensors' presence and shapes."""
    fields = []
    for name in names:
        if name.startswith("label_emb"):
            found = ["model.class_cond", "data.num_classes", f"{sec}.null_class"]
        elif name.startswith("time_embed"):
            found = [f"{sec}.ch"]
        elif name.startswith("input_blocks.0.0"):
            found = ["data.num_channels", "super_resolution.low_res_size", f"{sec}.ch"]
        elif name.startswith("out.2.positional_embedding"):
            found = ["data.image_size", f"{sec}.channel_mult"]
        elif name.startswith("out.2.c_proj"):
            found = ["data.num_classes"]
        elif name.startswith("out.2"):
            found = ["diffusion.var_type (learned: 2C outputs)", "data.num_channels"]
        elif ".emb_layers." in name:
            found = [f"{sec}.use_scale_shift_norm"]
        elif re.search(r"\.(qkv|norm|proj_out)\.", name):
            found = [f"{sec}.attention_resolutions"]
        elif ".op." in name or re.search(r"\.\d+\.conv\.", name):
            found = [f"{sec}.resblock_updown"]
        else:
            found = [f"{sec}.ch", f"{sec}.channel_mult", f"{sec}.num_res_blocks"]
        fields += [f for f in found if f not in fields]
    return "they depend on " + ", ".join(fields)


def describe(model: Any) -> str:
    """Returns the model's class and the hyperparameters that shape its tensors."""
    fields = ("ch", "channel_mult", "num_res_blocks", "attention_resolutions", "resblock_updown")
    shown = ", ".join(f"{f}={getattr(model, f)!r}" for f in fields)
    return f"{type(model).__name__}({shown}, num_classes={model.num_classes})"


def convert_state_dict(
    state_dict: dict[str, np.ndarray],
    model: Any,
    image_shape: tuple[int, int, int],
    source: str = "the state dict",
    origin: str = "guided-diffusion",
) -> Any:
    """Returns the flax params of `model` (a `unet.UNet` or `classifier.NoisyClassifier`;
    float32 numpy leaves) from an OpenAI state dict of `origin` (one of SOURCES); ValueError in
    one sentence naming `source`, the misfit tensors and their config fields unless the
    tensors fit exactly."""
    if origin not in SOURCES:
        raise ValueError(f"origin={origin!r} is not one of {', '.join(SOURCES)}.")
    sec = section(model)
    if origin == "improved-diffusion" and model.use_new_attention_order:
        raise ValueError(
            f"improved-diffusion's U-Net splits heads before q, k, v: set "
            f"{sec}.use_new_attention_order=False to import {source}."
        )
    expected = expected_tensors(model, image_shape)
    height, width, channels = image_shape
    weight_files.check_fits(
        state_dict,
        {name: shape for name, (_, shape) in expected.items()},
        source,
        f"{describe(model)} on {height}x{width}x{channels} inputs",
        hint=lambda names: _fields(names, sec),
    )
    flat = {path: _to_flax(state_dict[name], path) for name, (path, _) in expected.items()}
    return flax.traverse_util.unflatten_dict(flat)
