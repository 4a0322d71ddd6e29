"""Tests of diffax.metrics.quality: digits Fréchet distance and accuracy, FID/IS/PR dispatch."""

import json
import logging

import chex
import numpy as np
import pytest

from diffax import sample_quality
from diffax.metrics import fid, quality


def _no_eval_images(num_examples):
    raise AssertionError("these metrics must not read the eval split")


# ------------------------------------------------------------------------------------------------
# Digits.


def test_real_digits_score_near_the_floor_and_are_classified(classifier_path, digits_split):
    train_images, train_labels, test_images, _ = digits_split
    chosen = np.random.default_rng(1).choice(len(train_images), 300, replace=False)
    results = quality.digits_quality(train_images[chosen], train_labels[chosen], classifier_path)
    assert set(results) == {"digits_fd", "digits_fd_test_vs_train", "digits_class_accuracy"}
    assert results["digits_class_accuracy"] >= 0.95
    floor = results["digits_fd_test_vs_train"]
    assert floor > 0
    # Another draw of 300 real digits: within sampling noise of the floor (also 300 train digits).
    assert results["digits_fd"] < 1.5 * floor
    # The test split itself has exactly the reference statistics: distance 0.
    identical = quality.digits_quality(test_images, None, classifier_path)
    assert identical["digits_fd"] == pytest.approx(0.0, abs=1e-6 * floor)
    assert "digits_class_accuracy" not in identical


def test_accuracy_within_groups_counts_each_groups_samples_only(classifier_path, digits_split):
    _, _, test_images, test_labels = digits_split
    images, labels = test_images[:100], test_labels[:100].copy()
    labels[:20] = (labels[:20] + 1) % 10  # Group 0's first 20 of 50 samples name another digit.
    groups = np.repeat([0, 1], 50)
    results = quality.digits_quality(images, labels, classifier_path, groups=groups)
    right = quality.digits_quality(images, test_labels[:100], classifier_path, groups=groups)
    assert right["digits_class_accuracy_1"] == results["digits_class_accuracy_1"]
    shift = right["digits_class_accuracy_0"] - results["digits_class_accuracy_0"]
    assert 0.3 <= shift <= 0.4 + 1e-9  # The 20 relabelled of 50: at most 0.4, some were wrong.
    mean = (results["digits_class_accuracy_0"] + results["digits_class_accuracy_1"]) / 2
    assert results["digits_class_accuracy"] == pytest.approx(mean)
    with pytest.raises(ValueError, match="groups"):
        quality.digits_quality(images, labels, classifier_path, groups=groups[:10])


def test_read_as_tables_count_each_sample_once_by_named_and_read_digit(
    tiny_config, classifier_path, digits_split, tmp_path
):
    config = tiny_config(**{"eval.classifier_path": classifier_path})
    _, _, test_images, test_labels = digits_split
    images, labels = test_images[:100], test_labels[:100].copy()
    labels[:20] = (labels[:20] + 1) % 10  # Group 0's first 20 of 50 samples name another digit.
    groups = np.repeat([0, 1], 50)
    tables = sample_quality.digits_read_as(config, images, labels, str(tmp_path), groups=groups)
    accuracy = quality.digits_quality(images, labels, classifier_path, groups=groups)
    assert set(tables) == {0, 1}
    for g in (0, 1):
        assert tables[g].shape == (10, 10) and tables[g].sum() == 50
        # Row d holds the group's samples that name digit d.
        np.testing.assert_array_equal(
            tables[g].sum(axis=1), np.bincount(labels[groups == g], minlength=10)
        )
        assert np.trace(tables[g]) / 50 == pytest.approx(accuracy[f"digits_class_accuracy_{g}"])
    # The 20 relabelled digits are read as what they are: mostly off the diagonal, one row up.
    relabelled = sample_quality.digits_read_as(config, images[:20], labels[:20], str(tmp_path))[0]
    assert np.trace(relabelled) <= 2
    assert sum(relabelled[(d + 1) % 10, d] for d in range(10)) >= 18
    with pytest.raises(ValueError, match="groups must match"):
        sample_quality.digits_read_as(config, images, labels, str(tmp_path), groups=groups[:10])


def test_noise_scores_far_above_the_floor_at_chance_accuracy(classifier_path):
    noise = np.random.default_rng(2).uniform(-1, 1, size=(300, 8, 8, 1)).astype(np.float32)
    labels = np.arange(300) % 10
    results = quality.digits_quality(noise, labels, classifier_path)
    assert results["digits_fd"] > 10 * results["digits_fd_test_vs_train"]
    # Balanced labels: any labelling that ignores the image is right 10% of the time.
    assert abs(results["digits_class_accuracy"] - 0.1) < 0.1


def test_digits_samples_are_scored_on_the_data_grid(classifier_path, digits_split):
    # Off-grid values that round to the test digits' levels give the test digits' distance: 0.
    test_images = digits_split[2]
    jitter = np.random.default_rng(3).uniform(-0.4, 0.4, test_images.shape) * (2.0 / 16)
    results = quality.digits_quality(np.clip(test_images + jitter, -1, 1), None, classifier_path)
    assert results["digits_fd"] < 1e-6


def test_quality_metrics_gives_prefixed_plain_floats_for_digits(
    tiny_config, classifier_path, digits_split, tmp_path
):
    config = tiny_config(**{"eval.classifier_path": classifier_path})
    images = digits_split[2][:20]
    results = sample_quality.quality_metrics(
        config, images, digits_split[3][:20], str(tmp_path), _no_eval_images
    )
    assert set(results) == {
        "samples/digits_fd",
        "samples/digits_fd_test_vs_train",
        "samples/digits_class_accuracy",
    }
    assert all(type(value) is float for value in results.values())
    json.dumps(results)


def test_quality_metrics_without_inception_weights_is_empty_and_says_why(tiny_config, caplog):
    config = tiny_config()
    config.data.dataset = "cifar10"
    with caplog.at_level(logging.INFO):
        assert (
            sample_quality.quality_metrics(
                config, np.zeros((4, 8, 8, 3)), None, "/nowhere", _no_eval_images
            )
            == {}
        )
    assert "eval.inception_weights" in caplog.text
    assert "diffax/metrics/inception.py" in caplog.text


def test_inception_metrics_of_samples_against_themselves(inception_weights):
    samples = np.random.default_rng(7).integers(0, 256, size=(4, 8, 8, 1)).astype(np.float32)
    samples = samples / 255 * 2 - 1

    def reference_fn(feature_fn):
        return fid.compute_statistics(feature_fn(samples)), samples

    results = quality.inception_quality(samples, inception_weights, 4, reference_fn)
    assert set(results) == {"fid", "is_mean", "is_std", "precision", "recall"}
    chex.assert_tree_all_finite(results)
    # Identical feature sets: zero distance, each set inside the other's manifold.
    assert results["fid"] == pytest.approx(0.0, abs=1e-3)
    assert results["precision"] == 1.0 and results["recall"] == 1.0
    assert results["is_mean"] >= 1.0 - 1e-6


def test_upscaled_digits_come_back_exactly_to_the_classifiers_8x8(digits_split):
    import tensorflow as tf

    small = digits_split[2][:5]  # [5, 8, 8, 1] test digits in [-1, 1].
    big = tf.image.resize(small, (32, 32), method="bilinear").numpy()  # As the input pipeline.
    np.testing.assert_allclose(
        quality.bilinear_upscale_matrix(8, 4)
        @ small[0, ..., 0]
        @ quality.bilinear_upscale_matrix(8, 4).T,
        big[0, ..., 0],
        atol=1e-5,
    )
    np.testing.assert_allclose(quality.to_digits_size(big), small, atol=1e-4)
    np.testing.assert_array_equal(quality.to_digits_size(small), small)
    with pytest.raises(ValueError, match=r"\[N, 8k, 8k, 1\]"):
        quality.to_digits_size(np.zeros((2, 12, 12, 1), np.float32))
