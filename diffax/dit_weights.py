"""DiT checkpoints (facebookresearch/DiT's `models.py` state dicts) -> diffax DiT parameters.

The published DiT-XL/2 files (`DiT-XL-2-256x256.pt`, `DiT-XL-2-512x512.pt`; Peebles & Xie 2023)
hold the EMA weights as a plain state dict; DiT's own training checkpoints nest them under "ema"
(`weight_files.read_state_dict` unwraps both). Names, as facts of that file layout:

- `x_embedder.proj` (a p x p stride-p conv, [D, C, p, p]) -> `patch_embed` ([p*p*C, D], in
  `dit.patchify`'s order);
- `t_embedder.mlp.0`, `t_embedder.mlp.2` -> `time_embed_0`, `time_embed_1`;
- `y_embedder.embedding_table` ([K + 1, D], row K the null class) -> `label_embed`;
- `blocks.i.adaLN_modulation.1`, `.attn.qkv`, `.attn.proj`, `.mlp.fc1`, `.mlp.fc2` ->
  `block_i/adaLN_modulation`, `attn/qkv`, `attn/proj`, `mlp_in`, `mlp_out`;
- `final_layer.adaLN_modulation.1`, `final_layer.linear` -> `final_adaLN_modulation`,
  `final_linear`;
- `pos_embed` (the fixed 2-D sine-cosine code) -> nothing: diffax computes it
  (`dit.sincos_pos_embed_2d`), and checks the file's equals it.

Linear weights [out, in] become kernels [in, out]; float16 or bfloat16 files become float32.
"""

from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from diffax import weight_files
from diffax.models import dit

# diffax module name -> DiT's, for the modules outside the blocks.
_TOP = {
    "patch_embed": "x_embedder.proj",
    "time_embed_0": "t_embedder.mlp.0",
    "time_embed_1": "t_embedder.mlp.2",
    "label_embed": "y_embedder.embedding_table",
    "final_adaLN_modulation": "final_layer.adaLN_modulation.1",
    "final_linear": "final_layer.linear",
}
# Inside block_i.
_BLOCK = {
    "adaLN_modulation": "adaLN_modulation.1",
    "attn/qkv": "attn.qkv",
    "attn/proj": "attn.proj",
    "mlp_in": "mlp.fc1",
    "mlp_out": "mlp.fc2",
}
_LEAF = {"kernel": "weight", "bias": "bias", "embedding": "weight"}
POS_EMBED = "pos_embed"
# The largest difference from diffax's sine-cosine code a file's pos_embed may show (float16).
POS_EMBED_TOLERANCE = 1e-3


def dit_name(path: tuple[str, ...]) -> str:
    """Returns DiT's tensor name of a diffax DiT parameter path; KeyError for a module DiT's
    checkpoints do not have (cross-attention, image conditioning)."""
    module, leaf = "/".join(path[:-1]), path[-1]
    if path[0].startswith("block_"):
        index = path[0].removeprefix("block_")
        torch_module = f"blocks.{index}.{_BLOCK['/'.join(path[1:-1])]}"
    else:
        torch_module = _TOP[module]
    return f"{torch_module}.{_LEAF[leaf]}"


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...], patch: int) -> tuple[int, ...]:
    """Returns the DiT shape of a diffax leaf: kernels transposed, the patch embedding a conv."""
    if path[-1] != "kernel":
        return tuple(shape)
    if path[0] == "patch_embed":
        features, hidden = shape
        return (hidden, features // (patch * patch), patch, patch)
    return (shape[1], shape[0])


def expected_tensors(
    model: dit.DiT, image_shape: tuple[int, int, int]
) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """Returns {DiT name: (diffax path, DiT shape)} of every parameter of `model` for images
    `image_shape` = [H, W, C] (shapes only: nothing is allocated)."""
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    y = jax.ShapeDtypeStruct((1,), jnp.int32) if model.num_classes else None
    shapes = jax.eval_shape(lambda x, t, y: model.init(jax.random.PRNGKey(0), x, t, y), x, t, y)
    expected = {}
    for path, leaf in flax.traverse_util.flatten_dict(shapes["params"]).items():
        try:
            name = dit_name(path)
        except KeyError:
            raise ValueError(
                f"DiT checkpoints have no {'/'.join(path[:-1])}: a DiT with cross-attention or "
                "image conditioning cannot be imported (set model.text_cond=False and no "
                "super-resolution or inpainting)."
            ) from None
        expected[name] = (path, _torch_shape(path, leaf.shape, model.patch_size))
    return expected


def _to_flax(array: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    """Returns a DiT tensor in the layout of the diffax leaf `path`, as float32."""
    array = np.asarray(array, np.float32)
    if path[-1] == "kernel" and path[0] == "patch_embed":
        hidden = array.shape[0]
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0).reshape(-1, hidden))
    if path[-1] == "kernel":
        return np.ascontiguousarray(array.T)
    return array


def _describe(model: dit.DiT) -> str:
    return (
        f"DiT(hidden_size={model.hidden_size}, depth={model.depth}, num_heads={model.num_heads}, "
        f"patch_size={model.patch_size}, num_classes={model.num_classes}, "
        f"out_channels={model.out_channels})"
    )


def convert_state_dict(
    state_dict: dict[str, np.ndarray],
    model: dit.DiT,
    image_shape: tuple[int, int, int],
    source: str = "the state dict",
) -> Any:
    """Returns the flax params of `model` (float32 numpy leaves) from a DiT state dict; one
    ValueError sentence naming `source` and the misfits when the tensors do not fit exactly,
    or when its pos_embed is not the 2-D sine-cosine code of this image size."""
    expected = expected_tensors(model, image_shape)
    weight_files.check_fits(
        state_dict,
        {name: shape for name, (_, shape) in expected.items()},
        source,
        f"{_describe(model)} on {image_shape[0]}x{image_shape[1]}x{image_shape[2]} inputs",
        ignored=(POS_EMBED,),
    )
    if POS_EMBED in state_dict:
        p = model.patch_size
        code = dit.sincos_pos_embed_2d(image_shape[0] // p, image_shape[1] // p, model.hidden_size)
        stored = np.asarray(state_dict[POS_EMBED], np.float32).reshape(-1, model.hidden_size)
        if stored.shape != code.shape or np.max(np.abs(stored - code)) > POS_EMBED_TOLERANCE:
            raise ValueError(
                f"{source}: its pos_embed {tuple(np.shape(state_dict[POS_EMBED]))} is not DiT's "
                f"2-D sine-cosine embedding of a {code.shape[0]}-token grid: data.image_size "
                "(the latents' side) or model.dit.patch_size differs from the checkpoint's."
            )
    flat = {path: _to_flax(state_dict[name], path) for name, (path, _) in expected.items()}
    return flax.traverse_util.unflatten_dict(flat)
