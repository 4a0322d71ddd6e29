"""PyTorch state dicts from disk, and the one-sentence check that they fit a flax model.

A published checkpoint is a state dict: {dotted torch name: tensor}. It may come as a `.pt` /
`.pth` / `.bin` file (torch.save; reading it needs PyTorch, `pip install -e ".[convert]"`), or
as a `.safetensors` or `.npz` file of the same names, which need no PyTorch (convert elsewhere
with `safetensors.torch.save_file(state_dict, path)` or `numpy.savez(path, **arrays)`). Arrays
keep their stored dtype here; the converters make float32 parameters of them.
"""

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

# Keys under which training scripts nest the weights; the EMA is what papers sample from.
NESTED_KEYS = ("ema", "state_dict", "model")
# How many names of each kind a misfit sentence lists.
SHOWN = 5


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Returns {name: numpy array} of a state dict file (.pt/.pth/.bin, .safetensors or .npz),
    unwrapping a training checkpoint's nesting (its "ema" first); ValueError in one sentence
    for another kind of file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(2, "No such file", path)
    extension = os.path.splitext(path)[1].lower()
    if extension == ".safetensors":
        import safetensors.numpy  # Only pretrained weights need it.

        return dict(safetensors.numpy.load_file(path))
    if extension == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    if extension in (".pt", ".pth", ".bin", ".ckpt"):
        return _read_torch(path)
    raise ValueError(
        f"{path}: a state dict file must end in .pt, .pth, .bin, .ckpt, .safetensors or .npz."
    )


def _read_torch(path: str) -> dict[str, np.ndarray]:
    """Returns the arrays of a torch.save file (tensors only: weights_only=True)."""
    import torch  # The optional extra "convert": only .pt files need it.

    loaded = torch.load(path, map_location="cpu", weights_only=True)
    loaded = unwrap(loaded, path)

    def numpy(tensor) -> np.ndarray:
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16: widen, exactly.
            tensor = tensor.float()
        return tensor.detach().cpu().numpy()

    return {name: numpy(value) for name, value in loaded.items() if hasattr(value, "detach")}


def unwrap(loaded: Any, source: str) -> Mapping[str, Any]:
    """Returns the state dict inside a loaded checkpoint: itself, or its first of NESTED_KEYS."""
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{source} holds a {type(loaded).__name__}, not a state dict.")
    for key in NESTED_KEYS:
        if isinstance(loaded.get(key), Mapping):
            return loaded[key]
    return loaded


def listing(names: list[str]) -> str:
    """Returns 'a, b, c and 4 more' of a list of names."""
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def check_fits(
    state_dict: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[int, ...]],
    source: str,
    architecture: str,
    ignored: tuple[str, ...] = (),
    hint: Callable[[list[str]], str] | None = None,
) -> None:
    """Raises ValueError in one sentence naming `source`, the `architecture` and the first few
    missing, unexpected and mis-shaped tensors unless the state dict holds exactly the
    `expected` {torch name: torch shape} (names in `ignored` may be present or not); `hint`
    (misfit names -> text, e.g. the config fields they depend on) ends the sentence."""
    names = [name for name in state_dict if name not in ignored]
    unexpected = sorted(name for name in names if name not in expected)
    missing = sorted(name for name in expected if name not in state_dict)
    misshaped = sorted(
        f"{name} {tuple(state_dict[name].shape)} (expected {tuple(shape)})"
        for name, shape in expected.items()
        if name in state_dict and tuple(state_dict[name].shape) != tuple(shape)
    )
    if not (missing or unexpected or misshaped):
        return
    if len(missing) == len(expected):
        problems = [
            f"holds none of its {len(expected)} tensors (another architecture? it has "
            f"{listing(unexpected)})"
        ]
    else:
        problems = []
        if missing:
            problems.append(f"lacks {len(missing)} tensors: {listing(missing)}")
        if unexpected:
            problems.append(f"has {len(unexpected)} unexpected: {listing(unexpected)}")
        if misshaped:
            problems.append(f"has {len(misshaped)} mis-shaped: {listing(misshaped)}")
    said = "; it ".join(problems)
    if hint is not None:
        shown = missing[:SHOWN] + unexpected[:SHOWN] + [m.split()[0] for m in misshaped[:SHOWN]]
        said += f" ({hint(shown)})"
    raise ValueError(f"{source} does not fit {architecture}: it {said}.")
