"""Sample quality of generated images: digits Fréchet distance and class accuracy, FID/IS/PR.

Two feature networks, picked by the dataset:

- digits (8x8, 17 levels): the small CNN of `diffax.metrics.digits_classifier`, trained once (about
  10 s on CPU) and cached. Its 128-d features give a Fréchet distance to the digits test split; its
  logits give the fraction of class-conditional samples classified as their conditioning label.
- any other dataset: the 2015 FID Inception-v3 (`diffax.metrics.inception`), whose weights must be
  supplied as an .npz (`eval.inception_weights`; how to get them: that module's docstring). It gives
  FID against reference statistics, Inception Score, and improved precision/recall.

Reference statistics come from the user's .npz (`eval.reference_stats`: precomputed mu/sigma, or
reference images) or are computed from `data.eval_split` and cached as .npz beside the data, at
`<data_dir or TFDS default>/diffax_fid_stats/` (see `default_statistics_path`).

Samples are [N, H, W, C] float in [-1, 1], as `evaluate.Sampler.generate` returns them. Before any
network sees them they are snapped to the grid they would be saved on: the data's levels for the
digits, uint8 for Inception (the 2015 graph's input type).
"""

import argparse
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from diffax.datasets import digits as digits_lib
from diffax.metrics import digits_classifier, fid, inception

FeatureFn = Callable[[np.ndarray], np.ndarray]  # images [N, H, W, C] in [-1, 1] -> [N, D]

STATISTICS_FOLDER = "diffax_fid_stats"
_INCEPTION_MODEL = inception.InceptionV3FID(include_logits_bias=False)  # IS code has no fc bias.


# ------------------------------------------------------------------------------------------------
# Image arrays.


def snap_to_levels(images: np.ndarray, num_levels: int) -> np.ndarray:
    """Returns float32 images in [-1, 1] rounded to the grid v / (num_levels - 1) * 2 - 1."""
    top = num_levels - 1
    levels = np.clip(np.round((np.asarray(images, np.float32) + 1.0) / 2.0 * top), 0, top)
    return (levels / top * 2.0 - 1.0).astype(np.float32)


def images_from_npz(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Returns (float32 images [N, H, W, C] in [-1, 1], int labels [N] or None) from an .npz.

    Accepted keys: "images" (uint8 0..255, or float in [-1, 1]), or "levels" with "num_levels"
    (as `evaluate.save_samples` writes); optional "labels" [N]. Else ValueError naming the file.
    """
    with _open_npz(path) as data:
        images = _images_from_arrays(data, path)
        labels = None
        if "labels" in data.files and data["labels"].shape == (images.shape[0],):
            labels = data["labels"].astype(np.int64)
    return images, labels


def _open_npz(path: str):
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read {path!r} as an .npz file: {error}") from error


def _images_from_arrays(data: Any, path: str) -> np.ndarray:
    """Returns float32 [N, H, W, C] in [-1, 1] from the "images" or "levels" array of an npz."""
    if "images" in data.files:
        images = data["images"]
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / 255.0 * 2.0 - 1.0
        else:
            images = images.astype(np.float32)
            if images.size and (images.min() < -1.001 or images.max() > 1.001):
                raise ValueError(
                    f"{path!r}: float 'images' must lie in [-1, 1], got range "
                    f"[{images.min():.3g}, {images.max():.3g}] (store uint8 for 0..255 pixels)"
                )
    elif "levels" in data.files and "num_levels" in data.files:
        top = float(int(data["num_levels"]) - 1)
        images = data["levels"].astype(np.float32) / top * 2.0 - 1.0
    else:
        raise ValueError(
            f"{path!r} holds no images: expected key 'images' (uint8 [N, H, W, C] or float in "
            f"[-1, 1]) or 'levels' + 'num_levels'; found keys {sorted(data.files)}"
        )
    if images.ndim == 3:
        images = images[..., None]  # [N, H, W] grayscale -> [N, H, W, 1]
    if images.ndim != 4 or images.shape[0] < 2:
        raise ValueError(f"{path!r}: images must be [N, H, W, C] with N >= 2, got {images.shape}")
    return np.clip(images, -1.0, 1.0)


# ------------------------------------------------------------------------------------------------
# Digits: classifier features and accuracy.


def digits_quality(
    samples: np.ndarray,
    labels: np.ndarray | None,
    classifier_path: str,
    config: ml_collections.ConfigDict,
) -> dict[str, float]:
    """Returns {"digits_fd", "digits_fd_test_vs_train", "digits_class_accuracy" (with labels)}.

    digits_fd: Fréchet distance (squared feature units, float64 statistics) between classifier
    features of the N samples [N, 8, 8, 1] and of the 360 test digits. digits_fd_test_vs_train:
    the same distance for min(N, 1437) train digits (a seeded subsample) instead of the samples,
    i.e. what a perfect model scores at this sample size; Fréchet distance is biased upwards at
    small N, so compare the two, not digits_fd with 0. digits_class_accuracy: fraction of samples
    the classifier assigns to their conditioning label. The classifier is trained on first use and
    cached at classifier_path.
    """
    samples = np.asarray(samples, np.float32)
    if samples.ndim != 4 or samples.shape[1:] != digits_classifier.IMAGE_SHAPE:
        raise ValueError(f"digits samples must be [N, 8, 8, 1], got shape {samples.shape}")
    if samples.shape[0] < 2:
        raise ValueError(f"Fréchet distance needs at least 2 samples, got {samples.shape[0]}")
    # [N, 8, 8, 1] on the data's levels, as save_samples stores them.
    samples = snap_to_levels(samples, config.data.num_levels)
    params = _classifier_params(classifier_path)
    train_images, _, test_images, _ = digits_classifier.load_digits_split()
    sample_features, sample_logits = digits_classifier.features_and_logits(params, samples)
    test_stats = fid.compute_statistics(
        digits_classifier.features_and_logits(params, test_images)[0]  # [360, 128]
    )
    # The floor: real train digits, as many as the samples, against the same test statistics.
    num_floor = min(samples.shape[0], train_images.shape[0])
    chosen = np.random.default_rng(0).choice(train_images.shape[0], num_floor, replace=False)
    floor_stats = fid.compute_statistics(
        digits_classifier.features_and_logits(params, train_images[chosen])[0]  # [n, 128]
    )
    sample_stats = fid.compute_statistics(sample_features)
    results = {
        "digits_fd": _frechet(sample_stats, test_stats),
        "digits_fd_test_vs_train": _frechet(floor_stats, test_stats),
    }
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if labels.shape[0] != samples.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {samples.shape[0]} samples")
        predicted = np.argmax(sample_logits, axis=-1)  # [N]
        results["digits_class_accuracy"] = float(np.mean(predicted == labels))
    return results


def _classifier_params(path: str) -> dict:
    """Returns the digits classifier at path, trained and saved there first if it is absent."""
    path = os.path.abspath(path)
    if jax.process_count() > 1 and not os.path.isdir(path):
        # orbax refuses to save host-local jax.Arrays from several processes, but writes NumPy
        # arrays once; every process trains the same seeded classifier and saves it together.
        params, _ = digits_classifier.train_classifier(*digits_classifier.load_digits_split())
        params = jax.device_get(params)
        digits_classifier.save_classifier(path, params)
        return params
    return digits_classifier.get_or_train_classifier(path)


def _frechet(stats1: dict[str, np.ndarray], stats2: dict[str, np.ndarray]) -> float:
    return fid.frechet_distance(stats1["mu"], stats1["sigma"], stats2["mu"], stats2["sigma"])


# ------------------------------------------------------------------------------------------------
# Reference statistics.


def default_statistics_path(config: ml_collections.ConfigDict, network: str = "inception") -> str:
    """Returns <data_dir or TFDS default>/diffax_fid_stats/<network>_<dataset>_<split>_<HxWxC>.npz.

    The name also carries the example limit (eval.num_reference_examples) when one is set, and for
    image folders a hash of the folder path, so different references never share a file.
    """
    data = config.data
    root = data.get("data_dir")
    if not root:
        import tensorflow_datasets as tfds

        root = tfds.core.constants.get_default_data_dir()
    dataset = data.dataset
    if dataset == "image_folder":
        folder = os.path.abspath(os.fspath(data.folder))
        dataset += "_" + hashlib.sha1(folder.encode()).hexdigest()[:10]
    size = data.image_size
    parts = [network, dataset, data.eval_split, f"{size}x{size}x{data.num_channels}"]
    limit = config.eval.get("num_reference_examples", -1)
    if limit and limit > 0:
        parts.append(f"first{limit}")
    # TFDS names and split specs hold "/", "[", ":" and "%" (imagenet_resized/64x64, test[:10%]).
    name = "_".join(re.sub(r"[^A-Za-z0-9.-]+", "_", part).strip("_") for part in parts)
    return os.path.join(os.fspath(root), STATISTICS_FOLDER, name + ".npz")


def eval_split_images(config: ml_collections.ConfigDict, num_examples: int = -1) -> np.ndarray:
    """Returns float32 [n, H, W, C] in [-1, 1]: the first num_examples (-1: all) of data.eval_split.

    Every process reads the whole split (padding rows dropped), so each gets the same reference.
    """
    from diffax import input_pipeline  # TensorFlow: only when a reference is read from data.

    iterator = input_pipeline.create_eval_iterator(
        config.data,
        config.eval.batch_size,
        num_examples=num_examples,
        process_index=0,
        process_count=1,
    )
    batches = [batch["image"][batch["mask"] > 0] for batch in iterator]  # [b, H, W, C] each
    return np.concatenate(batches)


def load_reference(
    path: str, feature_fn: FeatureFn
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Returns (stats {"mu", "sigma"}, reference images [N, H, W, C] in [-1, 1] or None).

    path is an .npz of precomputed statistics (keys mu [D], sigma [D, D]) or of reference images
    (see images_from_npz), whose features feature_fn computes. ValueError naming the file otherwise.
    """
    with _open_npz(path) as data:
        keys = set(data.files)
    if set(fid.STATISTICS_KEYS) <= keys:
        return fid.load_statistics(path), None
    if "images" not in keys and "levels" not in keys:
        raise ValueError(
            f"Reference file {path!r} holds neither FID statistics (keys 'mu' [D], 'sigma' [D, D]) "
            f"nor reference images (key 'images' uint8 [N, H, W, C] or float in [-1, 1]); found "
            f"keys {sorted(keys)}"
        )
    images, _ = images_from_npz(path)
    return fid.compute_statistics(feature_fn(images)), images


def reference_statistics(
    config: ml_collections.ConfigDict, feature_fn: FeatureFn, cache_path: str | None = None
) -> dict[str, np.ndarray]:
    """Returns float64 {"mu": [D], "sigma": [D, D]} of the reference set's features.

    From eval.reference_stats when set (see load_reference); else loaded from cache_path (default:
    default_statistics_path(config)) if it exists, else computed over data.eval_split (the first
    eval.num_reference_examples; -1 all) and written there by process 0.
    """
    user_file = config.eval.get("reference_stats")
    if user_file:
        return load_reference(os.fspath(user_file), feature_fn)[0]
    cache_path = cache_path or default_statistics_path(config)
    if os.path.exists(cache_path):
        logging.info("Loading reference statistics from %s.", cache_path)
        return fid.load_statistics(cache_path)
    images = eval_split_images(config, config.eval.get("num_reference_examples", -1))
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


# ------------------------------------------------------------------------------------------------
# Inception: FID, IS, precision/recall.


@jax.jit
def _inception_apply(variables: dict, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns (pool3 [B, 2048], bias-free logits [B, 1008]) of images [B, H, W, C] in [-1, 1]."""
    # Snap to uint8 first: the 2015 graph takes uint8, and saved samples are 8-bit images.
    pixels = jnp.clip(jnp.round((images + 1.0) * 127.5), 0.0, 255.0)  # [B, H, W, C]
    x = inception.uint8_to_inception_input(pixels)
    if x.shape[-1] == 1:
        x = jnp.tile(x, (1, 1, 1, 3))  # grayscale -> RGB
    return _INCEPTION_MODEL.apply(variables, x)


def inception_outputs(
    variables: dict, images: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Returns float32 (pool3 [N, 2048], logits [N, 1008]) of images [N, H, W, C] in [-1, 1].

    Runs in padded batches of batch_size, so every batch reuses one compilation.
    """
    images = np.asarray(images, np.float32)
    features, logits = [], []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        num_real = batch.shape[0]
        batch = np.pad(batch, ((0, batch_size - num_real),) + ((0, 0),) * 3)
        batch_features, batch_logits = _inception_apply(variables, batch)
        features.append(np.asarray(batch_features)[:num_real])
        logits.append(np.asarray(batch_logits)[:num_real])
    return np.concatenate(features), np.concatenate(logits)


def inception_quality(
    samples: np.ndarray, config: ml_collections.ConfigDict, k: int = 3
) -> dict[str, float]:
    """Returns {"fid", "is_mean", "is_std", "precision", "recall"} of samples [N, H, W, C], [-1, 1].

    Uses the Inception weights at eval.inception_weights. FID is against reference_statistics
    (eval.reference_stats, or data.eval_split cached); IS over min(10, N) splits; precision/recall
    (k-NN, k=3) against N reference images: those of an eval.reference_stats images file, else the
    first N of data.eval_split (left out, with a log line, when there are none or fewer than k + 1).
    """
    samples = np.asarray(samples, np.float32)
    if samples.ndim != 4 or samples.shape[-1] not in (1, 3) or samples.shape[0] < 2:
        raise ValueError(f"samples must be [N >= 2, H, W, 1 or 3], got shape {samples.shape}")
    num_samples = samples.shape[0]
    variables = inception.load_params(os.fspath(config.eval.inception_weights), _INCEPTION_MODEL)
    batch_size = max(1, min(config.eval.batch_size, num_samples))

    def features_of(images: np.ndarray) -> np.ndarray:
        return inception_outputs(variables, images, batch_size)[0]

    sample_features, sample_logits = inception_outputs(variables, samples, batch_size)
    reference_images = None
    user_file = config.eval.get("reference_stats")
    if user_file:
        reference_stats, reference_images = load_reference(os.fspath(user_file), features_of)
    elif config.data.get("dataset"):
        reference_stats = reference_statistics(config, features_of)
    else:
        reference_stats = None
        logging.info("FID left out: no reference (eval.reference_stats, or a dataset).")
    if reference_images is None and config.data.get("dataset"):
        reference_images = eval_split_images(config, num_samples)
    real_features = None
    if reference_images is not None and reference_images.shape[0] > k:
        real_features = features_of(reference_images[:num_samples])
    else:
        logging.info(
            "Precision/recall left out: they need more than k=%d reference images (an images "
            ".npz in eval.reference_stats, or data.eval_split).",
            k,
        )
    metrics = fid.sample_metrics(sample_features, sample_logits, reference_stats, real_features)
    return {key: float(value) for key, value in metrics.items()}


# ------------------------------------------------------------------------------------------------
# Dispatch for evaluation and the command line.


def quality_metrics(
    config: ml_collections.ConfigDict,
    samples: np.ndarray,
    labels: np.ndarray | None,
    workdir: str,
) -> dict[str, float]:
    """Returns the dataset's quality metrics as plain floats keyed "samples/<metric>".

    digits: digits_quality (classifier at eval.classifier_path, default WORKDIR/digits_classifier);
    other datasets: inception_quality when eval.inception_weights is set, else {} (logged).
    """
    if config.data.dataset == "digits":
        classifier_path = config.eval.get("classifier_path") or os.path.join(
            workdir, "digits_classifier"
        )
        metrics = digits_quality(samples, labels, classifier_path, config)
    elif config.eval.get("inception_weights"):
        metrics = inception_quality(samples, config)
    else:
        logging.info(
            "FID/IS/precision/recall skipped: they need eval.inception_weights, an .npz of the "
            "2015 FID Inception-v3 weights (where to get and how to convert them: the module "
            "docstring of diffax/metrics/inception.py)."
        )
        metrics = {}
    return {f"samples/{key}": float(value) for key, value in metrics.items()}


def _folder_images(folder: str, image_size: int | None, num_channels: int):
    """Returns (float32 images [N, S, S, C] in [-1, 1], labels [N] or None) of an image folder."""
    from PIL import Image

    from diffax.datasets import image_folder

    index = image_folder.index_folder(folder)
    if image_size is None:
        with Image.open(index.paths[0]) as first:
            image_size = min(first.size)
    decoded = image_folder.load_images(index.paths, index.labels, image_size, num_channels)
    images = decoded.images.astype(np.float32) / 255.0 * 2.0 - 1.0
    labels = None
    # Class subfolders named by integers (0/, 1/, ...) are the conditioning labels.
    if index.class_names and all(name.isdigit() for name in index.class_names):
        labels = np.asarray([int(index.class_names[i]) for i in decoded.labels], np.int64)
    return images, labels


def _cli_config(arguments: argparse.Namespace) -> ml_collections.ConfigDict:
    """Returns the config fields the metrics read, filled from the command line."""
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict(
        {"dataset": "digits" if arguments.digits else None, "num_levels": digits_lib.NUM_LEVELS}
    )
    config.eval = ml_collections.ConfigDict(
        {
            "batch_size": arguments.batch_size,
            "inception_weights": arguments.inception_weights,
            "reference_stats": arguments.reference,
            "classifier_path": arguments.classifier_path,
        }
    )
    return config


def cli_main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Prints (as JSON) and returns the metrics of images in an .npz or a folder (see --help)."""
    parser = argparse.ArgumentParser(
        prog="python -m diffax.evaluate",
        description="Sample-quality metrics of a set of images (digits FD/accuracy or FID/IS/PR).",
    )
    parser.add_argument(
        "--images",
        required=True,
        help=".npz with 'images' (uint8, or float in [-1, 1]) or 'levels' + 'num_levels' (as "
        "written with samples), optional 'labels'; or a folder of image files (class subfolders "
        "named 0, 1, ... give labels).",
    )
    parser.add_argument(
        "--reference", help="FID reference: .npz of statistics (mu, sigma) or of images."
    )
    parser.add_argument(
        "--inception_weights", help="FID Inception-v3 .npz (diffax.metrics.inception)."
    )
    parser.add_argument(
        "--digits", action="store_true", help="8x8 digits: classifier FD and class accuracy."
    )
    parser.add_argument(
        "--classifier_path",
        help="Digits classifier checkpoint (trained and saved there if absent; default: beside the "
        "digits data, <TFDS data_dir>/diffax/digits_classifier).",
    )
    parser.add_argument(
        "--image_size", type=int, help="Folder images: side (default: the first's)."
    )
    parser.add_argument("--num_channels", type=int, choices=(1, 3), help="Folder images: channels.")
    parser.add_argument("--batch_size", type=int, default=50, help="Inception batch size.")
    arguments = parser.parse_args(argv)

    channels = arguments.num_channels or (1 if arguments.digits else 3)
    size = 8 if arguments.digits and arguments.image_size is None else arguments.image_size
    if os.path.isdir(arguments.images):
        images, labels = _folder_images(arguments.images, size, channels)
    else:
        images, labels = images_from_npz(arguments.images)
    config = _cli_config(arguments)
    if arguments.digits:
        classifier_path = arguments.classifier_path or os.path.join(
            digits_lib.default_data_dir(), "digits_classifier"
        )
        metrics = digits_quality(images, labels, classifier_path, config)
    elif arguments.inception_weights:
        metrics = inception_quality(images, config)
    else:
        parser.error("give --inception_weights (FID/IS/PR) or --digits")
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics
