"""Tests of `python -m diffax.tools.score_images`: .npz and folder inputs, digits and Inception."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diffax.metrics import quality
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


def test_without_a_metric_flag_it_says_what_to_give(tmp_path):
    path = str(tmp_path / "samples.npz")
    np.savez(path, images=np.zeros((4, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match="--inception_weights.*--digits"):
        score_images.score(path)
