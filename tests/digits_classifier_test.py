"""Tests for diffax.metrics.digits_classifier: the recipe's accuracy, the split, the orbax cache."""

import chex
import jax
import numpy as np
import pytest
from sklearn import datasets as sklearn_datasets

from diffax.metrics import digits_classifier as dc
from diffax.metrics import fid


@pytest.fixture(scope="module")
def split():
    return dc.load_digits_split()


@pytest.fixture(scope="module")
def trained(split):
    # The full default recipe (seed 0, 400 steps); about 10 s on 2 CPU cores.
    return dc.train_classifier(*split)


def test_split_is_the_digits_builder_split_in_minus_one_one(split):
    train_images, train_labels, test_images, test_labels = split
    chex.assert_shape(train_images, (1437, 8, 8, 1))
    chex.assert_shape(test_images, (360, 8, 8, 1))
    # Independently: RandomState(0).permutation(1797), first 1437 train (diffax/datasets/digits.py).
    bunch = sklearn_datasets.load_digits()
    order = np.random.RandomState(0).permutation(1797)
    np.testing.assert_array_equal(test_labels, bunch.target[order[1437:]])
    np.testing.assert_array_equal(train_labels, bunch.target[order[:1437]])
    np.testing.assert_allclose(test_images[..., 0], bunch.images[order[1437:]] / 8.0 - 1.0)
    assert train_images.min() == -1.0 and train_images.max() == 1.0


def test_recipe_reaches_97_percent_test_accuracy(trained, split):
    params, test_accuracy = trained
    assert test_accuracy >= 0.97
    _, _, test_images, test_labels = split
    _, logits = dc.features_and_logits(params, test_images)
    np.testing.assert_allclose(np.mean(logits.argmax(-1) == test_labels), test_accuracy)


def test_features_and_logits_match_direct_apply_across_batch_sizes(trained, split):
    params, _ = trained
    images = split[2][:37]
    features, logits = dc.features_and_logits(params, images, batch_size=16)  # padded last batch
    chex.assert_shape(features, (37, 128))
    chex.assert_shape(logits, (37, 10))
    direct_features, direct_logits = dc.DigitsClassifier().apply({"params": params}, images)
    np.testing.assert_allclose(features, np.asarray(direct_features), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, np.asarray(direct_logits), rtol=1e-5, atol=1e-5)


def test_digits_frechet_distance_separates_digits_from_noise(trained, split):
    params, _ = trained
    train_images, _, test_images, _ = split
    train_stats = fid.compute_statistics(dc.features_and_logits(params, train_images)[0])
    test_stats = fid.compute_statistics(dc.features_and_logits(params, test_images)[0])
    noise = np.random.default_rng(0).uniform(-1, 1, size=test_images.shape)
    noise_stats = fid.compute_statistics(dc.features_and_logits(params, noise)[0])
    held_out = fid.frechet_distance(
        test_stats["mu"], test_stats["sigma"], train_stats["mu"], train_stats["sigma"]
    )
    to_noise = fid.frechet_distance(
        noise_stats["mu"], noise_stats["sigma"], train_stats["mu"], train_stats["sigma"]
    )
    assert 10 * held_out < to_noise


def test_save_load_round_trip(trained, tmp_path):
    params, _ = trained
    path = str(tmp_path / "classifier")
    dc.save_classifier(path, params)
    loaded = dc.load_classifier(path)
    chex.assert_trees_all_equal_structs(loaded, params)
    chex.assert_trees_all_close(loaded, jax.device_get(params), rtol=0, atol=0)


def test_get_or_train_trains_once_then_loads_from_cache(monkeypatch, split, tmp_path):
    calls = []
    stand_in = dc.init_params(seed=3)

    def fake_train(*args, **kwargs):
        calls.append(1)
        return stand_in, 0.0

    monkeypatch.setattr(dc, "train_classifier", fake_train)
    path = str(tmp_path / "cache")
    first = dc.get_or_train_classifier(path, *split)
    assert len(calls) == 1
    chex.assert_trees_all_close(first, stand_in)
    second = dc.get_or_train_classifier(path, *split)
    assert len(calls) == 1  # cache hit: no retraining
    chex.assert_trees_all_close(second, jax.device_get(stand_in), rtol=0, atol=0)
