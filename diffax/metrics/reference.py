"""Reference statistics for Fréchet distances: a user's .npz, or the eval split's, cached on disk.

A reference is an .npz of precomputed statistics (keys "mu" [D], "sigma" [D, D]) or of reference
images (see `diffax.images.read_images`). Without one, the statistics of `data.eval_split` are
computed once and cached beside the data at
`<data_dir or TFDS default>/diffax_fid_stats/<network>_<dataset>_<split>_<HxWxC>[_firstN].npz`.
"""

import hashlib
import os
import re
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from diffax import images as images_lib
from diffax.metrics import fid

FeatureFn = Callable[[np.ndarray], np.ndarray]  # images [N, H, W, C] in [-1, 1] -> [N, D]
ImagesFn = Callable[[int], np.ndarray]  # num_examples (-1: all) -> eval images [n, H, W, C]

STATISTICS_FOLDER = "diffax_fid_stats"


def default_statistics_path(config: ml_collections.ConfigDict, network: str = "inception") -> str:
    """Returns the cache path of the eval split's statistics (module doc).

    The name also carries the example limit (eval.num_reference_examples) when one is set, and for
    image folders a hash of the folder path, so different references never share a file.
    """
    data = config.data
    root = data.data_dir
    if not root:
        import tensorflow_datasets as tfds

        root = tfds.core.constants.get_default_data_dir()
    dataset = data.dataset
    if dataset == "image_folder":
        folder = os.path.abspath(os.fspath(data.folder))
        dataset += "_" + hashlib.sha1(folder.encode()).hexdigest()[:10]
    size = data.image_size
    parts = [network, dataset, data.eval_split, f"{size}x{size}x{data.num_channels}"]
    limit = config.eval.num_reference_examples
    if limit and limit > 0:
        parts.append(f"first{limit}")
    # TFDS names and split specs hold "/", "[", ":" and "%" (imagenet_resized/64x64, test[:10%]).
    name = "_".join(re.sub(r"[^A-Za-z0-9.-]+", "_", part).strip("_") for part in parts)
    return os.path.join(os.fspath(root), STATISTICS_FOLDER, name + ".npz")


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


def reference_statistics(
    config: ml_collections.ConfigDict,
    feature_fn: FeatureFn,
    eval_images_fn: ImagesFn,
    cache_path: str | None = None,
) -> dict[str, np.ndarray]:
    """Returns float64 {"mu": [D], "sigma": [D, D]} of the reference set's features.

    From eval.reference_stats when set (see load_reference); else loaded from cache_path (default:
    default_statistics_path(config)) if it exists, else computed over eval_images_fn (the first
    eval.num_reference_examples; -1 all) and written there by process 0.
    """
    user_file = config.eval.reference_stats
    if user_file:
        return load_reference(os.fspath(user_file), feature_fn)[0]
    cache_path = cache_path or default_statistics_path(config)
    if os.path.exists(cache_path):
        logging.info("Loading reference statistics from %s.", cache_path)
        return fid.load_statistics(cache_path)
    images = eval_images_fn(config.eval.num_reference_examples)
    logging.info(
        "Computing reference statistics of %d %s/%s images (cached at %s).",
        images.shape[0],
        config.data.dataset,
        config.data.eval_split,
        cache_path,
    )
    stats = fid.compute_statistics(feature_fn(images))
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(cache_path), exist_ok=True)
        partial = f"{cache_path}.{os.getpid()}.partial.npz"
        fid.save_statistics(partial, stats)
        os.replace(partial, cache_path)  # Atomic: a concurrent reader never sees half a file.
    return stats
