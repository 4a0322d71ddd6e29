"""Sample quality of generated images: digits Fréchet distance and class accuracy, FID/IS/PR.

Functions of arrays and file paths; `diffax.sample_quality` picks them from the config. Two
feature networks, one per kind of data set:

- digits (8x8, 17 levels): the small CNN of `diffax.metrics.digits_classifier`, trained once (about
  10 s on CPU) and cached. Its 128-d features give a Fréchet distance to the digits test split; its
  logits give the fraction of class-conditional samples classified as their conditioning label.
- any other dataset: the 2015 FID Inception-v3 (`diffax.metrics.inception`), whose weights must be
  supplied as an .npz (how to get them: that module's docstring). It gives FID against reference
  statistics (`diffax.metrics.reference`), Inception Score, and improved precision/recall.

Samples are [N, H, W, C] float in [-1, 1]. Before any network sees them they are snapped to the
grid they would be saved on: the data's levels for the digits, uint8 for Inception (the 2015
graph's input type).
"""

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from diffax import images as images_lib
from diffax.metrics import digits_classifier, fid, inception, reference

# feature_fn -> (statistics {"mu", "sigma"} or None, reference images [M, H, W, C] or None).
ReferenceFn = Callable[[reference.FeatureFn], tuple[dict | None, np.ndarray | None]]

_INCEPTION_MODEL = inception.InceptionV3FID(include_logits_bias=False)  # IS code has no fc bias.


def digits_quality(
    samples: np.ndarray,
    labels: np.ndarray | None,
    classifier_path: str,
    num_levels: int = 17,
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """Returns {"digits_fd", "digits_fd_test_vs_train", "digits_class_accuracy" (with labels)};
    with groups [N] ints (e.g. each sample's prompt template) also the accuracy within each group
    g as "digits_class_accuracy_{g}".

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
    samples = images_lib.snap(samples, num_levels)  # As a saved sample file holds them.
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
        if groups is not None:
            groups = np.asarray(groups).reshape(-1)
            if groups.shape != labels.shape:
                raise ValueError(f"{groups.shape[0]} groups for {labels.shape[0]} samples")
            for g in np.unique(groups):
                hit = predicted[groups == g] == labels[groups == g]
                results[f"digits_class_accuracy_{int(g)}"] = float(np.mean(hit))
    return results


def bilinear_upscale_matrix(size: int, factor: int) -> np.ndarray:
    """Returns A [size * factor, size]: 1-D bilinear upscaling as the input pipeline does it
    (tf.image.resize, half-pixel centres, edges clamped), so an image X upscales to A X A^T."""
    out = (np.arange(size * factor) + 0.5) / factor - 0.5  # Source coordinate of each output.
    src = np.clip(out, 0.0, size - 1.0)
    lower = np.floor(src).astype(int)
    upper = np.minimum(lower + 1, size - 1)
    weight = src - lower
    matrix = np.zeros((size * factor, size))
    matrix[np.arange(size * factor), lower] += 1.0 - weight
    matrix[np.arange(size * factor), upper] += weight
    return matrix


def to_digits_size(samples: np.ndarray) -> np.ndarray:
    """Returns samples [N, 8k, 8k, 1] brought back to the digits' [N, 8, 8, 1].

    The digits classifier sees 8x8 images; latent diffusion on digits decodes to the 32x32
    images its autoencoder was trained on, which the pipeline made by bilinear upscaling. The
    8x8 image returned is the least-squares inverse of that upscaling (pinv(A) X pinv(A)^T), so
    an upscaled digit comes back exactly; block averaging would blur it (on real digits it
    raised the Fréchet distance to the test split from 7.6 to 65).
    """
    samples = np.asarray(samples, np.float32)
    _, height, width, _ = samples.shape
    side = digits_classifier.IMAGE_SHAPE[0]
    if height == width == side:
        return samples
    if height != width or height % side:
        raise ValueError(f"digits samples must be [N, 8k, 8k, 1], got shape {samples.shape}")
    inverse = np.linalg.pinv(bilinear_upscale_matrix(side, height // side))  # [8, 8k]
    return np.einsum("ih,nhwc,jw->nijc", inverse, samples, inverse).astype(np.float32)


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


@jax.jit
def _inception_apply(variables: dict, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns (pool3 [B, 2048], bias-free logits [B, 1008]) of images [B, H, W, C] in [-1, 1]."""
    # Snap to uint8 first: the 2015 graph takes uint8, and saved samples are 8-bit images.
    pixels = images_lib.to_levels(images, 256)  # [B, H, W, C]
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
    samples: np.ndarray,
    inception_weights: str,
    batch_size: int,
    reference_fn: ReferenceFn | None = None,
    k: int = 3,
) -> dict[str, float]:
    """Returns {"fid", "is_mean", "is_std", "precision", "recall"} of samples [N, H, W, C], [-1, 1].

    reference_fn(feature_fn) returns (FID reference statistics or None, reference images or None);
    without statistics FID is left out, and precision/recall (k-NN, k=3, against the first N
    reference images) need more than k of them. IS is over min(10, N) splits.
    """
    samples = np.asarray(samples, np.float32)
    if samples.ndim != 4 or samples.shape[-1] not in (1, 3) or samples.shape[0] < 2:
        raise ValueError(f"samples must be [N >= 2, H, W, 1 or 3], got shape {samples.shape}")
    num_samples = samples.shape[0]
    variables = inception.load_params(os.fspath(inception_weights), _INCEPTION_MODEL)
    batch_size = max(1, min(batch_size, num_samples))

    def features_of(images: np.ndarray) -> np.ndarray:
        return inception_outputs(variables, images, batch_size)[0]

    sample_features, sample_logits = inception_outputs(variables, samples, batch_size)
    reference_stats, reference_images = (
        (None, None) if reference_fn is None else (reference_fn(features_of))
    )
    if reference_stats is None:
        logging.info("FID left out: no reference statistics (eval.reference_stats, or a dataset).")
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


def digits_read_as(
    samples: np.ndarray,
    labels: np.ndarray,
    classifier_path: str,
    num_levels: int = 17,
    groups: np.ndarray | None = None,
) -> dict[int, np.ndarray]:
    """Returns {group: int [10, 10]}: row d counts the group's samples conditioned on digit d by
    the digit the digits classifier reads (column), the confusions behind each group's
    digits_class_accuracy; groups None puts every sample in group 0. Samples at 8x8."""
    samples = images_lib.snap(np.asarray(samples, np.float32), num_levels)
    labels = np.asarray(labels).reshape(-1)
    groups = np.zeros_like(labels) if groups is None else np.asarray(groups).reshape(-1)
    if not labels.shape == groups.shape == samples.shape[:1]:
        raise ValueError(
            f"{samples.shape[0]} samples, {labels.shape[0]} labels and {groups.shape[0]} groups "
            "must match."
        )
    _, logits = digits_classifier.features_and_logits(_classifier_params(classifier_path), samples)
    predicted = np.argmax(logits, axis=-1)
    num_digits = logits.shape[-1]
    tables = {}
    for g in np.unique(groups):
        table = np.zeros((num_digits, num_digits), np.int64)
        np.add.at(table, (labels[groups == g], predicted[groups == g]), 1)
        tables[int(g)] = table
    return tables
