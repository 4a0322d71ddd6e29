"""Tests of `python -m diffax.tools.score_images`: .npz and folder inputs, digits and Inception, and
guided-diffusion's sample and reference batches."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from diffax.metrics import inception, manifold, quality
from diffax.tools import score_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cli_prints_the_metrics_of_saved_levels_npz(classifier_path, digits_split, tmp_path):
    _, _, test_images, test_labels = digits_split
    path = str(tmp_path / "samples.npz")
    levels = np.round((test_images + 1) / 2 * 16).astype(np.uint8)
    np.savez(path, levels=levels, num_levels=17, labels=test_labels)
    argv = ["--images", path, "--digits", "--classifier_path", classifier_path]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [sys.executable, "-m", "diffax.tools.score_images", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout)
    assert printed["digits_fd"] < 1e-6  # the test split itself
    assert printed["digits_class_accuracy"] >= 0.95


def test_image_folder_with_class_subfolders_gives_labels(classifier_path, digits_split, tmp_path):
    _, _, test_images, test_labels = digits_split
    pixels = np.round((test_images[:60, ..., 0] + 1) / 2 * 255).astype(np.uint8)  # [60, 8, 8]
    for i, (image, label) in enumerate(zip(pixels, test_labels[:60], strict=True)):
        os.makedirs(tmp_path / "samples" / str(label), exist_ok=True)
        Image.fromarray(image).save(tmp_path / "samples" / str(label) / f"{i:03d}.png")
    results = score_images.score(
        str(tmp_path / "samples"), digits=True, classifier_path=classifier_path
    )
    # The folder's labels come from its subfolder names; real digits are classified right.
    assert results["digits_class_accuracy"] >= 0.95
    same = quality.digits_quality(test_images[:60], test_labels[:60], classifier_path)
    assert results == pytest.approx(same)


def test_guided_diffusion_sample_batch_reads_as_its_images_and_labels(
    classifier_path, digits_split, tmp_path
):
    _, _, test_images, test_labels = digits_split
    pixels = np.round((test_images[:60] + 1) / 2 * 255).astype(np.uint8)  # [60, 8, 8, 1]
    np.savez(tmp_path / "batch.npz", pixels, test_labels[:60])  # arr_0, arr_1
    results = score_images.score(
        str(tmp_path / "batch.npz"), digits=True, classifier_path=classifier_path
    )
    same = quality.digits_quality(
        pixels.astype(np.float32) / 255 * 2 - 1, test_labels[:60], classifier_path
    )
    assert "digits_class_accuracy" in results  # arr_1 gave the labels
    assert results == pytest.approx(same)


def test_without_a_metric_flag_it_says_what_to_give(tmp_path):
    path = str(tmp_path / "samples.npz")
    np.savez(path, images=np.zeros((4, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match="--inception_weights.*--digits"):
        score_images.score(path)


def _reference_statistics(rng):
    """Stored statistics unlike any random network's features: the evaluator must use them."""
    return {
        "mu": rng.normal(size=2048) * 0.1,
        "sigma": np.diag(rng.uniform(0.5, 1.5, size=2048)),
        "mu_s": rng.normal(size=2023) * 0.1,
        "sigma_s": np.diag(rng.uniform(0.5, 1.5, size=2023)),
    }


def test_guided_diffusion_batches_get_the_evaluators_five_numbers(inception_weights, tmp_path):
    rng = np.random.default_rng(11)
    samples = rng.integers(0, 256, size=(5, 16, 16, 3), dtype=np.uint8)
    reference_images = rng.integers(0, 256, size=(5, 16, 16, 3), dtype=np.uint8)
    stored = _reference_statistics(rng)
    np.savez(tmp_path / "samples.npz", samples, np.arange(5))  # arr_0 images, arr_1 labels
    np.savez(tmp_path / "ref.npz", reference_images, **stored)
    scores = score_images.score(
        str(tmp_path / "samples.npz"),
        reference_path=str(tmp_path / "ref.npz"),
        inception_weights=inception_weights,
        batch_size=5,
    )
    assert list(scores) == ["Inception Score", "FID", "sFID", "Precision", "Recall"]

    # Independently: the network on all ten images at once, fed as the 2015 graph feeds itself.
    model = inception.InceptionV3FID(include_logits_bias=False, with_spatial=True)
    variables = inception.load_params(inception_weights, model)
    pixels = np.concatenate([samples, reference_images]).astype(np.float32)
    pool, logits, mixed_6_conv = jax.jit(model.apply)(variables, (pixels - 128) / 128)
    pool, logits, mixed_6_conv = (np.asarray(x, np.float64) for x in (pool, logits, mixed_6_conv))
    # sFID's features: mixed_6/conv's first 7 channels, flattened in [H, W, C] order.
    spatial = np.stack(
        [mixed_6_conv[:, h, w, c] for h in range(17) for w in range(17) for c in range(7)], axis=1
    )

    def frechet(features, mu, sigma):
        """Heusel et al. eq. 6 in closed form for a diagonal sigma and n samples: with X the
        centred features, Tr((S sigma)^(1/2)) sums the square roots of the eigenvalues of
        Y Y^T / (n - 1), Y = X sigma^(1/2), an [n, n] matrix."""
        n, mean = len(features), features.mean(0)
        scaled = (features - mean) * np.sqrt(np.diag(sigma))  # Y [n, D]
        small = np.linalg.eigvalsh(scaled @ scaled.T / (n - 1))  # [n, n]
        trace_sqrt = np.sum(np.sqrt(np.clip(small, 0, None)))
        trace_s = np.sum((features - mean) ** 2) / (n - 1)
        return np.sum((mean - mu) ** 2) + trace_s + np.trace(sigma) - 2 * trace_sqrt

    # FID and sFID against the stored statistics, as given.
    assert scores["FID"] == pytest.approx(frechet(pool[:5], stored["mu"], stored["sigma"]), 1e-4)
    expected_sfid = frechet(spatial[:5], stored["mu_s"], stored["sigma_s"])
    assert scores["sFID"] == pytest.approx(expected_sfid, rel=1e-4)
    probs = np.exp(logits[:5] - logits[:5].max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)  # softmax over the 1008 bias-free logits
    kl = np.sum(probs * (np.log(probs) - np.log(probs.mean(0))), axis=1)
    assert scores["Inception Score"] == pytest.approx(np.exp(kl.mean()), rel=1e-4)
    pr = manifold.precision_recall(pool[5:], pool[:5])
    assert (scores["Precision"], scores["Recall"]) == (pr["precision"], pr["recall"])


def test_a_wrong_reference_batch_is_one_sentence_naming_file_and_key(tmp_path):
    rng = np.random.default_rng(12)
    images = rng.integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "samples.npz", images)
    stored = _reference_statistics(rng)
    del stored["sigma_s"]
    np.savez(tmp_path / "ref.npz", images, **stored)
    argv = ["--images", str(tmp_path / "samples.npz"), "--reference", str(tmp_path / "ref.npz")]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [sys.executable, "-m", "diffax.tools.score_images", *argv, "--inception_weights", "w.npz"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "ref.npz" in lines[0] and "lacks key 'sigma_s'" in lines[0]


def test_reference_batches_need_the_inception_weights(tmp_path):
    rng = np.random.default_rng(13)
    images = rng.integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "samples.npz", images)
    np.savez(tmp_path / "ref.npz", images)
    with pytest.raises(ValueError, match=r"ref\.npz.*--inception_weights"):
        score_images.score(str(tmp_path / "samples.npz"), reference_path=str(tmp_path / "ref.npz"))
