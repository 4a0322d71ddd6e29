"""Pretrained autoencoder weights: diffusers-format `AutoencoderKL` safetensors -> flax params.

A diffusers checkpoint folder holds `config.json` (the architecture) and
`diffusion_pytorch_model.safetensors` (torch tensors by dotted name). `diffax.models.autoencoder`
names its modules after those names (`down_blocks.0` <-> `down_blocks_0`, `to_out.0` <->
`to_out`), so the mapping is derived from the flax model itself: every flax leaf has exactly one
expected tensor name and torch shape, and a file that does not supply exactly those is refused
with one sentence naming what is missing, unexpected or mis-shaped.

Layouts: conv kernels OIHW -> HWIO; dense kernels [out, in] -> [in, out] (attention projections
stored as 1x1 convs, [out, in, 1, 1], are accepted too); GroupNorm weight -> scale. The older
attention names `query`, `key`, `value`, `proj_attn` are read as `to_q`, `to_k`, `to_v`,
`to_out.0`. Tensors of any float dtype (float16, bfloat16) become float32 parameters.
"""

import dataclasses
import json
import os
import re
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from diffax import weight_files
from diffax.models.autoencoder import AutoencoderKL

# flax module names that stand for an entry of a torch ModuleList: `resnets_1` <-> `resnets.1`.
_LIST_MODULES = ("down_blocks", "up_blocks", "resnets", "attentions", "downsamplers", "upsamplers")
_LIST_NAME = re.compile(r"^({})_(\d+)$".format("|".join(_LIST_MODULES)))
# Older diffusers attention names -> the current ones (the tensors are the same).
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def diffusers_name(path: tuple[str, ...]) -> str:
    """Returns the diffusers tensor name of a flax param path, e.g. (..., "conv1", "kernel") ->
    "....conv1.weight"."""
    parts = []
    for part in path[:-1]:
        match = _LIST_NAME.match(part)
        if match:
            parts.extend(match.groups())
        elif part == "to_out":
            parts.append("to_out.0")  # to_out is [Linear, Dropout] in the reference.
        else:
            parts.append(part)
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[path[-1]]
    return ".".join([*parts, leaf])


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Returns the torch shape of a flax leaf: HWIO -> OIHW, [in, out] -> [out, in]."""
    if path[-1] == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if path[-1] == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def expected_tensors(
    model: AutoencoderKL, image_size: int | None = None
) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """Returns {diffusers name: (flax path, torch shape)} of every parameter of `model`.

    Shapes only (jax.eval_shape): nothing is allocated, so this is cheap at any size.
    """
    size = image_size or model.downsample_factor
    x = jax.ShapeDtypeStruct((1, size, size, model.in_channels), jnp.float32)
    shapes = jax.eval_shape(
        lambda x: model.init({"params": jax.random.PRNGKey(0)}, x, sample_posterior=False), x
    )["params"]
    flat = flax.traverse_util.flatten_dict(shapes)
    return {
        diffusers_name(path): (path, _torch_shape(path, leaf.shape)) for path, leaf in flat.items()
    }


def _current_name(name: str) -> str:
    """Returns a tensor name with the older attention projection names replaced."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[-2] in _LEGACY_ATTENTION and "attentions" in parts:
        return ".".join([*parts[:-2], _LEGACY_ATTENTION[parts[-2]], parts[-1]])
    return name


def _to_flax(array: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    """Returns a torch-layout tensor in the flax layout of `path`, as float32."""
    array = np.asarray(array).astype(np.float32)
    if path[-1] == "kernel" and array.ndim == 4 and path[-2].startswith("to_"):
        array = array[:, :, 0, 0]  # An attention projection stored as a 1x1 conv.
    if path[-1] == "kernel" and array.ndim == 4:
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    if path[-1] == "kernel" and array.ndim == 2:
        return np.ascontiguousarray(array.T)  # [out, in] -> [in, out]
    return array


def _fits(path: tuple[str, ...], shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Returns whether a file tensor's shape fits, allowing 1x1-conv attention projections."""
    if tuple(shape) == expected:
        return True
    return path[-2].startswith("to_") and tuple(shape) == (*expected, 1, 1)


def convert_state_dict(
    state_dict: dict[str, np.ndarray], model: AutoencoderKL, source: str = "the state dict"
) -> Any:
    """Returns flax params of `model` (float32 numpy leaves) from diffusers-named torch tensors.

    Raises one ValueError sentence naming `source` and the first few missing, unexpected and
    mis-shaped tensors when the tensors do not fit the model exactly.
    """
    expected = expected_tensors(model)
    current: dict[str, np.ndarray] = {}  # Current names; an older duplicate stays unexpected.
    for name, array in state_dict.items():
        new = _current_name(name)
        key = new if new in expected and new not in current else name
        path = expected[key][0] if key in expected else None
        if path is not None and _fits(path, array.shape, expected[key][1]):
            array = np.reshape(array, expected[key][1])  # A 1x1-conv projection: [out, in].
        current[key] = array
    architecture = (
        f"AutoencoderKL(block_out_channels={tuple(model.block_out_channels)}, "
        f"layers_per_block={model.layers_per_block}, z_channels={model.z_channels})"
    )
    shapes = {name: shape for name, (_, shape) in expected.items()}
    weight_files.check_fits(current, shapes, source, architecture)
    flat = {path: _to_flax(current[name], path) for name, (path, _) in expected.items()}
    return flax.traverse_util.unflatten_dict(flat)


def load_safetensors(path: str) -> dict[str, np.ndarray]:
    """Returns {name: numpy array} of a local .safetensors file, dtypes as stored."""
    import safetensors.numpy  # Imported here: only loading pretrained weights needs it.

    return safetensors.numpy.load_file(path)


def load_autoencoder_params(path: str, model: AutoencoderKL) -> Any:
    """Returns flax params of `model` from a diffusers AutoencoderKL .safetensors file.

    `path` may also be a diffusers folder holding `diffusion_pytorch_model.safetensors`.
    Raises ValueError (naming the file and the first few misfits) if the tensors do not fit.
    """
    if os.path.isdir(path):
        path = os.path.join(path, "diffusion_pytorch_model.safetensors")
    return convert_state_dict(load_safetensors(path), model, source=path)


@dataclasses.dataclass(frozen=True)
class VaeConfig:
    """The architecture and latent normalisation of a diffusers AutoencoderKL config.json."""

    in_channels: int = 3
    out_channels: int = 3
    z_channels: int = 4  # diffusers' latent_channels.
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    norm_num_groups: int = 32
    mid_block_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    # Latents go to the diffusion model as (z - shift_factor) * scaling_factor.
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0

    def model(self, dtype: Any = jnp.float32) -> AutoencoderKL:
        """Returns the flax AutoencoderKL of this architecture."""
        return AutoencoderKL(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            z_channels=self.z_channels,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            norm_num_groups=self.norm_num_groups,
            mid_block_attention=self.mid_block_attention,
            use_quant_conv=self.use_quant_conv,
            use_post_quant_conv=self.use_post_quant_conv,
            dtype=dtype,
        )


# config.json key -> VaeConfig field; keys a config leaves out keep diffusers' defaults.
_CONFIG_KEYS = {
    "in_channels": "in_channels",
    "out_channels": "out_channels",
    "latent_channels": "z_channels",
    "block_out_channels": "block_out_channels",
    "layers_per_block": "layers_per_block",
    "norm_num_groups": "norm_num_groups",
    "mid_block_add_attention": "mid_block_attention",
    "use_quant_conv": "use_quant_conv",
    "use_post_quant_conv": "use_post_quant_conv",
    "scaling_factor": "scaling_factor",
    "shift_factor": "shift_factor",
}


def architecture_from_config_json(path: str) -> VaeConfig:
    """Returns the VaeConfig of a diffusers AutoencoderKL `config.json` (or its folder).

    Raises ValueError for a config of another class or with blocks or activations this model
    does not have.
    """
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    with open(path) as f:
        raw = json.load(f)
    problems = []
    class_name = raw.get("_class_name", "AutoencoderKL")
    if class_name != "AutoencoderKL":
        problems.append(f"_class_name is {class_name!r}")
    for key, block in (
        ("down_block_types", "DownEncoderBlock2D"),
        ("up_block_types", "UpDecoderBlock2D"),
    ):
        if any(kind != block for kind in raw.get(key, ())):
            problems.append(f"{key} {raw[key]} are not all {block}")
    if raw.get("act_fn", "silu") != "silu":
        problems.append(f"act_fn is {raw['act_fn']!r}")
    if problems:
        raise ValueError(
            f"{path} is not an AutoencoderKL this model implements: {'; '.join(problems)}."
        )
    fields = {field: raw[key] for key, field in _CONFIG_KEYS.items() if raw.get(key) is not None}
    if "block_out_channels" in fields:
        fields["block_out_channels"] = tuple(fields["block_out_channels"])
    return VaeConfig(**fields)
