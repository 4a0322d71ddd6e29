"""Images on the data's grid: [-1, 1] floats <-> integer levels, sample grids, sample files.

Data in diffax lie on the grid x = v / (num_levels - 1) * 2 - 1 for integer levels v in
0..num_levels-1 (17 levels for the digits, 256 for 8-bit images). These are the only functions
that map between the two; they work on NumPy and JAX arrays alike (and `from_levels` on TF tensors).
A sample file is an .npz with "levels" (uint8 [N, H, W, C]), "num_levels" and "labels" ([N] or
empty), written by `save_samples` and read by `read_images`.
"""

import os
from typing import Any

import numpy as np

Array = Any  # np.ndarray or jax.Array


def to_levels(images: Array, num_levels: int) -> Array:
    """Returns images in [-1, 1] as the nearest levels 0..num_levels-1 (float, same array type)."""
    top = num_levels - 1
    return ((images + 1.0) / 2.0 * top).round().clip(0, top)


def from_levels(levels: Array, num_levels: int) -> Array:
    """Returns float levels v mapped to v / (num_levels - 1) * 2 - 1, in [-1, 1]."""
    return levels / float(num_levels - 1) * 2.0 - 1.0


def snap(images: Array, num_levels: int) -> Array:
    """Returns images in [-1, 1] rounded to the data's grid (what saving them would keep)."""
    return from_levels(to_levels(images, num_levels), num_levels)


def image_grid(images: np.ndarray, num_levels: int, columns: int, scale: int = 1) -> np.ndarray:
    """Returns uint8 [rows*(H+1)+1, columns*(W+1)+1, C] with a 1-pixel border, upscaled by scale."""
    levels = to_levels(np.asarray(images, np.float64), num_levels)
    pixels = np.round(levels * 255 / (num_levels - 1))
    pixels = pixels.astype(np.uint8)
    n, h, w, c = pixels.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * (h + 1) + 1, columns * (w + 1) + 1, c), np.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = 1 + r * (h + 1), 1 + col * (w + 1)
        grid[top : top + h, left : left + w] = pixels[i]
    return grid.repeat(scale, axis=0).repeat(scale, axis=1)


def save_png(path: str, grid: np.ndarray) -> None:
    """Writes a uint8 [H, W, 1 or 3] grid as a PNG."""
    from PIL import Image

    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)


def save_samples(
    directory: str,
    name: str,
    images: np.ndarray,
    num_levels: int,
    labels: np.ndarray | None = None,
    columns: int = 10,
    **arrays: np.ndarray,
) -> str:
    """Writes `name`.png (a grid of at most ten rows) and `name`.npz (every sample, and any
    further named arrays); returns png."""
    path = os.path.join(directory, name + ".png")
    scale = max(1, 64 // images.shape[1])
    shown = images[: columns * 10]
    save_png(path, image_grid(shown, num_levels, columns, scale))
    np.savez_compressed(
        os.path.join(directory, name + ".npz"),
        levels=to_levels(images, num_levels).astype(np.uint8),
        labels=np.asarray([] if labels is None else labels),
        num_levels=num_levels,
        **arrays,
    )
    return path


def grid_columns(num_images: int, num_classes: int) -> int:
    """Returns the grid's columns: one per class (up to 16 classes), 10 for an unconditional
    model, about sqrt(N) for many classes."""
    if num_classes == 0:
        return 10
    return num_classes if num_classes <= 16 else int(np.ceil(np.sqrt(num_images)))


def _open_npz(path: str):
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read {path!r} as an .npz file: {error}") from error


def npz_keys(path: str) -> set[str]:
    """Returns the array names in an .npz (ValueError naming the file if it is not one)."""
    with _open_npz(path) as data:
        return set(data.files)


def read_images(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Returns (float32 images [N, H, W, C] in [-1, 1], int labels [N] or None) from an .npz.

    Accepted keys: "images" (uint8 0..255, or float in [-1, 1]), or "levels" with "num_levels"
    (as `save_samples` writes), or guided-diffusion's sample batch "arr_0" (uint8); optional
    labels "labels" (or "arr_1") [N]. Else ValueError naming the file.
    """
    with _open_npz(path) as data:
        image_key = next((key for key in ("images", "arr_0") if key in data.files), None)
        if image_key is not None:
            images = data[image_key]
            if images.dtype == np.uint8:
                images = from_levels(images.astype(np.float32), 256)
            else:
                images = images.astype(np.float32)
                if images.size and (images.min() < -1.001 or images.max() > 1.001):
                    raise ValueError(
                        f"{path!r}: float {image_key!r} must lie in [-1, 1], got range "
                        f"[{images.min():.3g}, {images.max():.3g}] (store uint8 for 0..255 pixels)"
                    )
        elif "levels" in data.files and "num_levels" in data.files:
            images = from_levels(data["levels"].astype(np.float32), int(data["num_levels"]))
        else:
            raise ValueError(
                f"{path!r} holds no images: expected key 'images' (uint8 [N, H, W, C] or float in "
                f"[-1, 1]), 'levels' + 'num_levels', or 'arr_0' (uint8); found keys "
                f"{sorted(data.files)}"
            )
        labels = None
        label_key = "arr_1" if image_key == "arr_0" else "labels"
        if label_key in data.files and data[label_key].shape == (images.shape[0],):
            labels = data[label_key].astype(np.int64)
    if images.ndim == 3:
        images = images[..., None]  # [N, H, W] grayscale -> [N, H, W, 1]
    if images.ndim != 4 or images.shape[0] < 2:
        raise ValueError(f"{path!r}: images must be [N, H, W, C] with N >= 2, got {images.shape}")
    return np.clip(images, -1.0, 1.0).astype(np.float32), labels


def save_chain(
    directory: str, name: str, chain: np.ndarray, num_levels: int, frame_ms: int = 120
) -> tuple[str, str]:
    """Writes the reverse chain [F, N, H, W, C] in [-1, 1] as `name`.gif (one frame a step, the N
    samples side by side) and `name`.png (a strip: a row per sample, a column per step)."""
    frames, num = chain.shape[:2]
    scale = max(1, 64 // chain.shape[2])
    grids = [image_grid(chain[f], num_levels, num, scale) for f in range(frames)]
    pictures = [grid[..., 0] if grid.shape[-1] == 1 else grid for grid in grids]
    from PIL import Image

    gif = os.path.join(directory, name + ".gif")
    first, *rest = [Image.fromarray(p) for p in pictures]
    # Hold the last frame (the samples) three times as long.
    durations = [frame_ms] * (frames - 1) + [frame_ms * 3]
    first.save(gif, save_all=True, append_images=rest, duration=durations, loop=0)
    strip = chain.transpose(1, 0, 2, 3, 4).reshape((num * frames, *chain.shape[2:]))
    png = os.path.join(directory, name + ".png")
    save_png(png, image_grid(strip, num_levels, frames, scale))
    return gif, png
