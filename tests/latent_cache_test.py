"""Tests of diffax.latent_cache: encode once into files, detect stale caches, iterate latents."""

import dataclasses
import json
import os

import numpy as np
import pytest

from diffax import input_pipeline, latent_cache, latents, sharding
from diffax.datasets import captions
from diffax.models import text_encoder


@pytest.fixture(scope="module")
def mesh():
    return sharding.create_mesh()


@pytest.fixture
def latent(latent_config, mesh):
    return latents.load(latent_config(), mesh)


def test_cache_round_trip_holds_the_encoder_posterior_and_labels(latent, tmp_path):
    cached = latent_cache.build_or_load(latent, "test", str(tmp_path), batch_size=64)
    assert cached.count == 360 and cached.mean.shape == (360, 8, 8, 4)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # No temporary left.
    batch = next(input_pipeline.create_eval_iterator(latent.image_data, 64, split="test"))
    mean, logvar = latent.model.apply(
        {"params": latent.params}, batch["image"], method=latent.model.encode
    )
    np.testing.assert_allclose(cached.mean[:64], mean, atol=1e-5)
    np.testing.assert_allclose(cached.logvar[:64], logvar, atol=1e-5)
    np.testing.assert_array_equal(cached.label[:64], batch["label"])
    # Eval batches: the posterior means times the scale, in order, padding masked.
    batches = list(latent_cache.eval_iterator(cached, 256, latent.scale))
    assert len(batches) == 2 and batches[1]["mask"].sum() == 360 - 256
    np.testing.assert_allclose(batches[0]["image"][:64], 2.0 * np.asarray(mean), atol=1e-5)


def test_same_fingerprint_is_reused_and_a_changed_one_is_rebuilt(latent, tmp_path, monkeypatch):
    first = latent_cache.build_or_load(latent, "test[:40]", str(tmp_path), batch_size=16)
    assert first.count == 40

    def refuse(*args, **kwargs):
        raise AssertionError("a fresh cache was encoded again")

    with monkeypatch.context() as patch:
        patch.setattr(latent_cache, "_encode_into", refuse)
        again = latent_cache.build_or_load(latent, "test[:40]", str(tmp_path), batch_size=16)
    np.testing.assert_array_equal(again.mean, first.mean)
    # A newer autoencoder checkpoint: the cache is stale and rebuilt, never reused.
    newer = dataclasses.replace(latent, version="step 2")
    called = []
    original = latent_cache._encode_into
    monkeypatch.setattr(
        latent_cache, "_encode_into", lambda *a, **k: called.append(1) or original(*a, **k)
    )
    rebuilt = latent_cache.build_or_load(newer, "test[:40]", str(tmp_path), batch_size=16)
    assert called and rebuilt.count == 40
    path = latent_cache.split_dir(str(tmp_path), "test[:40]", False)
    with open(os.path.join(path, "meta.json")) as f:
        assert json.load(f)["fingerprint"]["autoencoder_version"] == "step 2"
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]  # Old and tmp removed.


def test_flip_caches_each_image_and_its_mirror(latent, tmp_path):
    cached = latent_cache.build_or_load(latent, "test[:8]", str(tmp_path), 8, flip=True)
    assert cached.count == 16
    batch = next(input_pipeline.create_eval_iterator(latent.image_data, 8, split="test[:8]"))
    mirrored = np.ascontiguousarray(batch["image"][:, :, ::-1])
    mean, _ = latent.model.apply({"params": latent.params}, mirrored, method=latent.model.encode)
    np.testing.assert_allclose(cached.mean[8:], mean, atol=1e-5)
    np.testing.assert_array_equal(cached.label[8:], cached.label[:8])


def _synthetic(count=50):
    """A cache whose row i has mean i, std 0.5 and label i."""
    rows = np.arange(count, dtype=np.float32)
    return latent_cache.CachedSplit(
        mean=np.broadcast_to(rows[:, None, None, None], (count, 2, 2, 3)).copy(),
        logvar=np.full((count, 2, 2, 3), np.log(0.25), np.float32),
        label=np.arange(count, dtype=np.int32),
        count=count,
        path="synthetic",
    )


def test_train_batches_sample_the_scaled_posterior_and_cover_each_epoch():
    cached, scale = _synthetic(), 3.0
    stream = latent_cache.train_iterator(cached, 10, scale, seed=0)
    batches = [next(stream) for _ in range(5)]  # One epoch of 50.
    labels = np.concatenate([b["label"] for b in batches])
    assert sorted(labels) == list(range(50))  # Each row once per epoch, shuffled.
    assert not np.array_equal(labels, np.arange(50))
    eps = np.concatenate(
        [b["image"] / scale - b["label"][:, None, None, None] for b in batches]
    )  # (z / scale - mean) / std ~ N(0, 1) * 0.5
    assert abs(eps.mean()) < 0.05 and abs(eps.std() - 0.5) < 0.03
    # Resuming after 3 batches yields exactly the batches an uninterrupted stream would.
    resumed = latent_cache.train_iterator(cached, 10, scale, seed=0, start_batch=3)
    for expected in batches[3:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], expected["image"])
        np.testing.assert_array_equal(got["label"], expected["label"])


def test_train_batches_of_two_processes_split_the_rows():
    cached = _synthetic(20)
    seen = []
    for process in range(2):
        stream = latent_cache.train_iterator(cached, 5, 1.0, 0, process, 2)
        seen.append(np.concatenate([next(stream)["label"] for _ in range(2)]))
    assert sorted(np.concatenate(seen)) == list(range(20))


def _captioned_rows(count: int) -> latent_cache.CachedSplit:
    rows = np.arange(count, dtype=np.float32)
    return latent_cache.CachedSplit(
        mean=np.broadcast_to(rows[:, None, None, None], (count, 2, 2, 3)).copy(),
        logvar=np.full((count, 2, 2, 3), -60.0, np.float32),  # z = the row, to read it back.
        label=(np.arange(count) % 10).astype(np.int32),
        count=count,
        path="synthetic",
    )


def test_fixed_captions_caption_each_row_by_its_label_and_training_template():
    cached = _captioned_rows(30)
    stream = latent_cache.train_iterator(
        cached, 8, 1.0, seed=3, text_length=32, fixed_captions=True
    )
    batch = next(stream)
    chosen = np.rint(batch["image"][:, 0, 0, 0]).astype(int)
    expected = captions.captions(cached.label, 3, "train")  # Row r's caption, fixed by (3, r).
    assert text_encoder.detokenize(batch["tokens"]) == [expected[r] for r in chosen]
    assert batch["tokens"].shape == (8, 32) and batch["tokens"].dtype == np.int32


def test_drawn_captions_name_each_row_s_label_by_a_new_template_each_batch():
    cached = _captioned_rows(10)
    stream = latent_cache.train_iterator(cached, 10, 1.0, seed=3, text_length=32)
    batches = [next(stream) for _ in range(6)]
    by_row: dict[int, set[str]] = {}
    for batch in batches:
        rows = np.rint(batch["image"][:, 0, 0, 0]).astype(int)
        for row, caption in zip(rows, text_encoder.detokenize(batch["tokens"]), strict=True):
            assert caption in [t[cached.label[row]] for t in captions.caption_table("train")]
            by_row.setdefault(int(row), set()).add(caption)
    assert min(len(v) for v in by_row.values()) >= 3  # 6 reads of each row, 17 templates.
    resumed = next(latent_cache.train_iterator(cached, 10, 1.0, 3, text_length=32, start_batch=5))
    np.testing.assert_array_equal(resumed["tokens"], batches[5]["tokens"])


def test_per_channel_cached_latents_have_zero_mean_and_unit_variance(
    latent_config, data_dir, tmp_path
):
    """The autoencoder's eval writes each channel's statistics; the cache's batches use them."""
    from conftest import make_autoencoder_workdir

    from diffax import evaluate

    workdir = str(tmp_path / "autoencoder")
    evaluate.evaluate_checkpoint(make_autoencoder_workdir(workdir, data_dir), workdir)
    config = latent_config()
    config.latent.autoencoder_workdir = workdir
    config.latent.normalization = "per_channel"
    latent = latents.load(config, sharding.create_mesh())
    cached = latent_cache.build_or_load(latent, "test", str(tmp_path / "cache"), 120)
    batches = list(latent_cache.eval_iterator(cached, 120, latent.scale, shift=latent.shift))
    z = np.concatenate([b["image"][b["mask"] > 0] for b in batches]).reshape(-1, 4)
    assert len(z) == 360 * 8 * 8
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-4)
    assert np.ptp(latent.shift) > 0 and np.ptp(latent.scale) > 0  # Channels really differ.
