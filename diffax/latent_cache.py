"""Encoded splits on disk: latent diffusion trains on cached posteriors, never on the encoder.

A split is encoded once (jitted, its batches sharded over the devices) into a folder of .npy files:
`mean.npy` and `logvar.npy` [N, h, w, z] float32 (the unscaled posterior q(z|x)), `label.npy`
[N] int32, and `meta.json` with the fingerprint (autoencoder, its checkpoint step or file stamp,
data set, split, image size, flips) and the count. The folder is written under a temporary name
and renamed, so a cache is whole or absent; a cache whose fingerprint differs is stale, and is
rebuilt (logged), never reused. With data.random_flip the training split holds each image and its
mirror, so drawing uniformly from the cache flips with probability 1/2.

The iterators read the arrays memory-mapped and yield batches as the input pipeline does:
training draws z = scale (mean + exp(logvar / 2) eps - shift), eps ~ N(0, I) new at every step;
eval takes z = scale (mean - shift) (the deterministic posterior mean); shift is 0 and scale one
number, or both per channel (latent.normalization).
"""

import dataclasses
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterator

import jax
import numpy as np
from absl import logging

from diffax import autoencoder_losses, input_pipeline, sharding
from diffax.datasets import captions
from diffax.latents import LatentSpace

FORMAT = 1  # Bumped when the files change; part of the fingerprint.
_ARRAYS = ("mean", "logvar", "label")


@dataclasses.dataclass(frozen=True)
class CachedSplit:
    """An encoded split, memory-mapped: the first `count` rows of each array are examples."""

    mean: np.ndarray  # [N, h, w, z] float32, unscaled.
    logvar: np.ndarray  # [N, h, w, z] float32.
    label: np.ndarray  # [N] int32.
    count: int
    path: str


def fingerprint(latent: LatentSpace, split: str, flip: bool) -> dict:
    """Returns what a cache of split must have been built from to be reused."""
    data = latent.image_data
    return {
        "format": FORMAT,
        "autoencoder": latent.source,
        "autoencoder_version": latent.version,
        "dataset": data.dataset,
        "data_dir": os.path.abspath(data.data_dir) if data.data_dir else None,
        "folder": os.path.abspath(data.folder) if data.get("folder") else None,
        "split": split,
        "image_size": data.image_size,
        "num_channels": data.num_channels,
        "num_levels": data.num_levels,
        "flip": bool(flip),
    }


def split_dir(cache_dir: str, split: str, flip: bool) -> str:
    """Returns the folder of split's cache (split specs like "train[:50%]" made file-safe)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", split) + ("-flip" if flip else "")
    return os.path.join(cache_dir, name)


def _read_meta(path: str) -> dict | None:
    try:
        with open(os.path.join(path, "meta.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def open_split(path: str) -> CachedSplit:
    """Returns the cache in folder path, memory-mapped (read-only)."""
    meta = _read_meta(path)
    if meta is None:
        raise FileNotFoundError(f"No latent cache in {path} (meta.json is missing).")
    arrays = {name: np.load(os.path.join(path, f"{name}.npy"), mmap_mode="r") for name in _ARRAYS}
    return CachedSplit(**arrays, count=int(meta["count"]), path=path)


def _encode_into(latent: LatentSpace, split: str, flip: bool, path: str, batch_size: int) -> int:
    """Encodes split into .npy files in path (process 0 writes); returns the example count."""
    data = latent.image_data
    total = input_pipeline.num_examples(data, split) * (2 if flip else 1)
    writer = jax.process_index() == 0
    files = {}
    if writer:
        shape = (total, *latent.latent_shape)
        for name, dtype, rows in (("mean", np.float32, shape), ("logvar", np.float32, shape)):
            files[name] = np.lib.format.open_memmap(
                os.path.join(path, f"{name}.npy"), "w+", dtype, rows
            )
        files["label"] = np.lib.format.open_memmap(
            os.path.join(path, "label.npy"), "w+", np.int32, (total,)
        )
    local = sharding.per_process_batch_size(batch_size, "eval.batch_size")
    count = 0
    for batch in input_pipeline.create_eval_iterator(data, local, split=split):
        views = [batch["image"], batch["image"][:, :, ::-1]] if flip else [batch["image"]]
        for images in views:
            global_batch = sharding.global_batch(
                {
                    "image": np.ascontiguousarray(images),
                    "label": batch["label"],
                    "mask": batch["mask"],
                },
                latent.mesh,
            )
            mean, logvar = latent.encode(global_batch["image"])
            # Every process gathers (a collective with several processes); process 0 writes.
            mean, logvar, label, mask = (
                sharding.to_host(a)
                for a in (mean, logvar, global_batch["label"], global_batch["mask"])
            )
            keep = mask > 0
            n = int(keep.sum())
            if writer and n:
                files["mean"][count : count + n] = mean[keep]
                files["logvar"][count : count + n] = logvar[keep]
                files["label"][count : count + n] = label[keep]
            count += n
    for array in files.values():
        array.flush()
    return count


def build_or_load(
    latent: LatentSpace, split: str, cache_dir: str, batch_size: int, flip: bool = False
) -> CachedSplit:
    """Returns split's cache in cache_dir, encoding it first if it is absent or stale.

    batch_size: the global encoding batch (a multiple of the device count).
    """
    path = split_dir(cache_dir, split, flip)
    wanted = fingerprint(latent, split, flip)
    meta = _read_meta(path)
    if meta is not None and meta.get("fingerprint") == wanted:
        logging.info("Reusing the latent cache %s (%d examples).", path, meta["count"])
        return open_split(path)
    if meta is not None:
        changed = sorted(k for k in wanted if meta.get("fingerprint", {}).get(k) != wanted[k])
        logging.warning("The latent cache %s is stale (%s changed); rebuilding it.", path, changed)
    os.makedirs(cache_dir, exist_ok=True)
    # One name for every process: process 0 writes there, then renames it into place.
    tmp = os.path.join(cache_dir, f".tmp-{os.path.basename(path)}-{_shared_token()}")
    if jax.process_index() == 0:
        os.makedirs(tmp)
    count = _encode_into(latent, split, flip, tmp, batch_size)
    if jax.process_index() == 0:
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({"fingerprint": wanted, "count": count}, f, indent=2)
        stale = None
        if os.path.exists(path):
            stale = os.path.join(cache_dir, f".stale-{os.path.basename(path)}-{uuid.uuid4().hex}")
            os.rename(path, stale)
        os.rename(tmp, path)  # Atomic: readers see the old cache, none, or the new one whole.
        if stale:
            shutil.rmtree(stale, ignore_errors=True)
        logging.info("Cached %d encoded examples of %s in %s.", count, split, path)
    _sync("latent_cache")
    return open_split(path)


def _shared_token() -> str:
    """Returns a random token every process agrees on (process 0's)."""
    token = np.frombuffer(uuid.uuid4().bytes[:8], np.int64).copy()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        token = multihost_utils.broadcast_one_to_all(token)
    return f"{abs(int(np.asarray(token)[0])):x}"


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def train_iterator(
    cached: CachedSplit,
    batch_size: int,
    scale: float,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    start_batch: int = 0,
    text_length: int = 0,
    shift: float | np.ndarray = 0.0,
    fixed_captions: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields endless {"image": float32 [b, h, w, z] = scale * (mean + std eps - shift), "label"
    [b]}; scale and shift are scalars or per channel [z] (LatentSpace.scale, .shift).

    Shuffled per epoch; b = batch_size per process, each process reading every
    process_count-th cached row. The stream is a fixed function of (seed, process): batch k is
    the same whether or not the run was resumed at start_batch. With text_length > 0 also
    "tokens" int32 [b, text_length]: each row's caption from its label by a training template
    (diffax.datasets.captions) drawn afresh for each batch, or with fixed_captions the template
    fixed by (seed, row), as the pixel pipeline writes them.
    """
    index = jax.process_index() if process_index is None else process_index
    processes = jax.process_count() if process_count is None else process_count
    rows = np.arange(index, cached.count, processes)
    if len(rows) == 0:
        raise ValueError(f"Process {index} has no cached latents in {cached.path}.")
    orders: dict[int, np.ndarray] = {}
    table = captions.token_table(text_length) if text_length else None  # [templates * 10, L]
    fixed = captions.template_indices(seed, cached.count, "train") if fixed_captions else None

    def order(epoch: int) -> np.ndarray:
        if epoch not in orders:
            for old in [e for e in orders if e < epoch - 1]:
                del orders[old]  # Only the current and the previous epoch are ever needed.
            rng = np.random.default_rng([seed, index, epoch])
            orders[epoch] = rows[rng.permutation(len(rows))]
        return orders[epoch]

    batch = start_batch
    while True:
        positions = range(batch * batch_size, (batch + 1) * batch_size)
        chosen = np.array([order(p // len(rows))[p % len(rows)] for p in positions])
        sort = np.argsort(chosen)  # Sorted reads of the memory map, then the drawn order back.
        unsort = np.argsort(sort)
        mean = np.asarray(cached.mean[chosen[sort]])[unsort]
        logvar = np.asarray(cached.logvar[chosen[sort]])[unsort]
        eps = np.random.default_rng([seed, index, 1 << 32, batch]).standard_normal(
            mean.shape, np.float32
        )
        z = autoencoder_losses.normalize_latents(mean + np.exp(0.5 * logvar) * eps, scale, shift)
        out = {"image": z.astype(np.float32), "label": np.asarray(cached.label[chosen], np.int32)}
        if table is not None:
            if fixed is None:
                rng = np.random.default_rng([seed, index, 2 << 32, batch])
                templates = rng.integers(0, len(captions.TRAIN_TEMPLATES), batch_size)
            else:
                templates = fixed[chosen]
            out["tokens"] = table[templates * len(captions.DIGIT_WORDS) + out["label"]]
        yield out
        batch += 1


def eval_iterator(
    cached: CachedSplit,
    batch_size: int,
    scale: float,
    num_examples: int = -1,
    process_index: int | None = None,
    process_count: int | None = None,
    shift: float | np.ndarray = 0.0,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields one ordered pass of {"image": scale * (mean - shift) [b, h, w, z], "label", "mask"
    [b]}.

    As input_pipeline.create_eval_iterator: num_examples > 0 keeps the first examples, padding
    rows have mask 0, and every process yields the same number of batches.
    """
    index = jax.process_index() if process_index is None else process_index
    processes = jax.process_count() if process_count is None else process_count
    count = cached.count if num_examples <= 0 else min(num_examples, cached.count)
    shares = np.array_split(np.arange(count), processes)
    num_batches = math.ceil(max(len(s) for s in shares) / batch_size)
    rows = shares[index]
    for b in range(num_batches):
        chosen = rows[b * batch_size : (b + 1) * batch_size]
        n = len(chosen)
        image = np.zeros((batch_size, *cached.mean.shape[1:]), np.float32)
        label = np.zeros((batch_size,), np.int32)
        mask = np.zeros((batch_size,), np.float32)
        image[:n] = autoencoder_losses.normalize_latents(
            np.asarray(cached.mean[chosen]), scale, shift
        )
        label[:n] = cached.label[chosen]
        mask[:n] = 1.0
        yield {"image": image, "label": label, "mask": mask}


def cache_dir(config, workdir: str) -> str:
    """Returns where a latent run caches its encoded splits: latent.cache_dir or WORKDIR/latents."""
    return config.latent.cache_dir or os.path.join(workdir, "latents")
