"""Reference statistics for Fréchet distances from a file.

A reference is an .npz of precomputed statistics (keys "mu" [D], "sigma" [D, D]) or of reference
images (see `diffax.images.read_images`). The eval split's statistics, cached on disk when no
file is given, are `diffax.sample_quality`'s (they depend on the config).
"""

from collections.abc import Callable

import numpy as np

from diffax import images as images_lib
from diffax.metrics import fid

FeatureFn = Callable[[np.ndarray], np.ndarray]  # images [N, H, W, C] in [-1, 1] -> [N, D]
ImagesFn = Callable[[int], np.ndarray]  # num_examples (-1: all) -> eval images [n, H, W, C]

STATISTICS_FOLDER = "diffax_fid_stats"


def load_reference(
    path: str, feature_fn: FeatureFn
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Returns (stats {"mu", "sigma"}, reference images [N, H, W, C] in [-1, 1] or None).

    path is an .npz of statistics or of reference images, whose features feature_fn computes.
    ValueError naming the file otherwise.
    """
    keys = images_lib.npz_keys(path)
    if set(fid.STATISTICS_KEYS) <= keys:
        return fid.load_statistics(path), None
    if "images" not in keys and "levels" not in keys:
        raise ValueError(
            f"Reference file {path!r} holds neither FID statistics (keys 'mu' [D], 'sigma' [D, D]) "
            f"nor reference images (key 'images' uint8 [N, H, W, C] or float in [-1, 1]); found "
            f"keys {sorted(keys)}"
        )
    images, _ = images_lib.read_images(path)
    return fid.compute_statistics(feature_fn(images)), images
