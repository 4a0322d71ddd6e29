"""The config's sample-quality figures: which feature network, which classifier, which reference.

`diffax.metrics` computes the figures as functions of arrays; this module reads the config and the
workdir to choose them. The digits get the digits classifier (eval.classifier_path, default
WORKDIR/digits_classifier); other data sets the FID Inception-v3 (eval.inception_weights) against
reference statistics: eval.reference_stats, or those of `data.eval_split`, computed once and cached
beside the data at
`<data_dir or TFDS default>/diffax_fid_stats/<network>_<dataset>_<split>_<HxWxC>[_firstN].npz`.
"""

import hashlib
import os
import re

import jax
import ml_collections
import numpy as np
from absl import logging

from diffax.metrics import digits_classifier, fid, quality, reference


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
    return os.path.join(os.fspath(root), reference.STATISTICS_FOLDER, name + ".npz")


def reference_statistics(
    config: ml_collections.ConfigDict,
    feature_fn: reference.FeatureFn,
    eval_images_fn: reference.ImagesFn,
    cache_path: str | None = None,
) -> dict[str, np.ndarray]:
    """Returns float64 {"mu": [D], "sigma": [D, D]} of the reference set's features.

    From eval.reference_stats when set (see load_reference); else loaded from cache_path (default:
    default_statistics_path(config)) if it exists, else computed over eval_images_fn (the first
    eval.num_reference_examples; -1 all) and written there by process 0.
    """
    user_file = config.eval.reference_stats
    if user_file:
        return reference.load_reference(os.fspath(user_file), feature_fn)[0]
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


def quality_metrics(
    config: ml_collections.ConfigDict,
    samples: np.ndarray,
    labels: np.ndarray | None,
    workdir: str,
    eval_images_fn: reference.ImagesFn,
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """Returns the dataset's quality metrics as plain floats keyed "samples/<metric>" (groups: see
    digits_quality).

    digits: digits_quality (classifier at eval.classifier_path, default WORKDIR/digits_classifier)
    of the samples brought to 8x8 by `to_digits_size` when larger (decoded latents: 32x32);
    other datasets: inception_quality when eval.inception_weights is set, else {} (logged).
    eval_images_fn(n) returns the first n (-1: all) images of data.eval_split.
    """
    ev = config.eval
    if config.data.dataset == "digits":
        samples, classifier_path = _for_digits_classifier(config, samples, workdir)
        metrics = quality.digits_quality(
            samples, labels, classifier_path, config.data.num_levels, groups=groups
        )
    elif ev.inception_weights:

        def reference_fn(feature_fn):
            if ev.reference_stats:
                stats, images = reference.load_reference(os.fspath(ev.reference_stats), feature_fn)
            else:
                stats = reference_statistics(config, feature_fn, eval_images_fn)
                images = None
            return stats, eval_images_fn(samples.shape[0]) if images is None else images

        metrics = quality.inception_quality(
            samples, ev.inception_weights, ev.batch_size, reference_fn
        )
    else:
        logging.info(
            "FID/IS/precision/recall skipped: they need eval.inception_weights, an .npz of the "
            "2015 FID Inception-v3 weights (where to get and how to convert them: the module "
            "docstring of diffax/metrics/inception.py)."
        )
        metrics = {}
    return {f"samples/{key}": float(value) for key, value in metrics.items()}


def digits_read_as(
    config: ml_collections.ConfigDict,
    samples: np.ndarray,
    labels: np.ndarray,
    workdir: str,
    groups: np.ndarray | None = None,
) -> dict[int, np.ndarray]:
    """Returns quality.digits_read_as of the samples with the config's digits classifier and
    levels (classifier and resizing as quality_metrics)."""
    samples, classifier_path = _for_digits_classifier(config, samples, workdir)
    return quality.digits_read_as(
        samples, labels, classifier_path, config.data.num_levels, groups=groups
    )


def _for_digits_classifier(
    config: ml_collections.ConfigDict, samples: np.ndarray, workdir: str
) -> tuple[np.ndarray, str]:
    """Returns (samples at the classifier's 8x8, its path: eval.classifier_path or
    WORKDIR/digits_classifier)."""
    if samples.shape[1] != digits_classifier.IMAGE_SHAPE[0]:
        logging.info(
            "Digits metrics on %s samples brought to 8x8 (the classifier's size) by the "
            "least-squares inverse of the pipeline's bilinear upscaling.",
            "x".join(map(str, samples.shape[1:3])),
        )
    path = config.eval.classifier_path or os.path.join(workdir, "digits_classifier")
    return quality.to_digits_size(samples), path
