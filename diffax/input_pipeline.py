"""tf.data input pipeline: per-process split, preprocessing to [-1, 1], batches as numpy dicts.

Sources: any prepared TFDS image dataset (by name and data.data_dir), the offline `digits` builder
(prepared on first use) and image folders (decoded into host memory). Every process reads only its
own shard of the split (tfds.even_splits by process index), so `batch_size` is per process.
Pixels become x = v / (num_levels - 1) * 2 - 1, which lie on the grid {-1 + 2k / (num_levels - 1)}.
"""

from __future__ import annotations  # Annotations name tf types without importing TF.

import dataclasses
import functools
import math
import operator
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epy

from diffax import images as images_lib
from diffax.datasets import captions as captions_lib
from diffax.datasets import digits as digits_lib
from diffax.datasets import image_folder as image_folder_lib

# TensorFlow (~3 s to import) loads on first use, when a split is read: --mode=sample of a model
# that reads no data never pays for it.
with epy.lazy_imports():
    import tensorflow as tf


def hide_accelerators_from_tf() -> None:
    """Keeps TF off GPUs/TPUs so it never takes accelerator memory that JAX needs.

    Called where tf.data is set up (not at import: importing diffax changes no global state).
    """
    for kind in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):  # Devices already initialized, or no such kind.
            pass


# ITU-R BT.601 luma weights, the same as PIL's convert("L"), so every source grays alike.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)


@dataclasses.dataclass(frozen=True)
class _SplitSize:
    """What tfds split arithmetic needs of a split that has no TFDS metadata (image folders)."""

    num_examples: int

    @property
    def shard_lengths(self) -> list[int]:
        return [self.num_examples]


Ranges = list[tuple[str, int, int]]  # (split name, start, stop) slices, concatenated in order


class _TfdsSource:
    """A prepared TFDS builder with an "image" feature and maybe a "label" feature."""

    def __init__(self, builder: tfds.core.DatasetBuilder):
        self.builder = builder
        features = builder.info.features
        if "image" not in features:
            raise ValueError(f"TFDS dataset {builder.name!r} has no 'image' feature.")
        self.channels = features["image"].shape[-1]
        label = features["label"] if "label" in features else None
        self.has_label = label is not None and tuple(label.shape) == ()
        self.num_classes = getattr(label, "num_classes", None) if self.has_label else None
        self.split_infos = builder.info.splits

    def read(self, ranges: Ranges, shuffle_files: bool = False, seed: int = 0) -> tf.data.Dataset:
        """Returns {"image": uint8 [H, W, C], "label": int32 []} for the examples of ranges."""
        splits = [
            tfds.core.ReadInstruction(name, from_=start, to=stop, unit="abs")
            for name, start, stop in ranges
            if stop > start
        ]
        keys = {"image": True, "label": True} if self.has_label else {"image": True}
        ds = self.builder.as_dataset(
            split=functools.reduce(operator.add, splits),
            shuffle_files=shuffle_files,
            read_config=tfds.ReadConfig(shuffle_seed=seed),
            decoders=tfds.decode.PartialDecoding(keys),
        )
        has_label = self.has_label

        def select(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            label = tf.cast(example["label"], tf.int32) if has_label else tf.constant(0, tf.int32)
            return {"image": example["image"], "label": label}

        return ds.map(select, num_parallel_calls=tf.data.AUTOTUNE)


class _FolderSource:
    """An image folder: split "train" holds every file, in sorted order."""

    def __init__(self, data_config: ml_collections.ConfigDict):
        self.index = image_folder_lib.index_folder(data_config.folder)
        self.config = data_config
        self.channels = data_config.num_channels  # PIL converts while decoding.
        self.num_classes = max(len(self.index.class_names), 1)
        self.split_infos = {"train": _SplitSize(len(self.index.paths))}

    def read(self, ranges: Ranges, shuffle_files: bool = False, seed: int = 0) -> tf.data.Dataset:
        """Returns the decoded files of ranges, {"image": uint8 [S, S, C], "label": int32 []}."""
        del shuffle_files, seed  # The files are decoded into memory; tf.data shuffles them.
        chosen = [i for _, start, stop in ranges for i in range(start, stop)]
        decoded = image_folder_lib.load_images(
            [self.index.paths[i] for i in chosen],
            [self.index.labels[i] for i in chosen],
            image_size=self.config.image_size,
            num_channels=self.config.num_channels,
            skip_bad_images=bool(self.config.get("skip_bad_images", False)),
            resize=bool(self.config.get("resize_images", True)),
        )
        return tf.data.Dataset.from_tensor_slices(
            {"image": decoded.images, "label": decoded.labels}
        )


def _not_prepared_message(builder: tfds.core.DatasetBuilder, name: str, data_dir: Any) -> str:
    root = data_dir if data_dir is not None else tfds.core.constants.get_default_data_dir()
    manual = ""
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        manual = f"download its files by hand into {root}/downloads/manual first (see its docs), "
    return (
        f"TFDS dataset {name!r} is not prepared in data_dir={root!r}: {manual}prepare it with "
        f'`tfds build {name} --data_dir={root}` or `python -c "import tensorflow_datasets as '
        f"tfds; tfds.builder('{name}', data_dir='{root}').download_and_prepare()\"` before "
        "training (diffax never downloads data itself)."
    )


def _open_source(data_config: ml_collections.ConfigDict) -> _TfdsSource | _FolderSource:
    """Returns the dataset of data_config; ValueError at once if it is unknown or not prepared."""
    hide_accelerators_from_tf()
    name = data_config.dataset
    if name == "image_folder":
        return _FolderSource(data_config)
    if name == "digits":
        return _TfdsSource(digits_lib.prepare_digits(data_config.data_dir))
    try:
        builder = tfds.builder(name, data_dir=data_config.data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"Unknown dataset {name!r}: use a TFDS dataset name, 'digits' or 'image_folder'."
        ) from None
    if not builder.is_prepared():
        raise ValueError(_not_prepared_message(builder, name, data_config.data_dir))
    return _TfdsSource(builder)


def check_available(data_config: ml_collections.ConfigDict) -> None:
    """Raises ValueError in one sentence if the data set is unknown, not prepared, an image folder
    without images, or cannot give what the config asks; reads metadata and file names only and
    writes nothing (the digits, written on first use, are checked by datasets.digits)."""
    if data_config.dataset != "digits":
        _check_source(data_config, _open_source(data_config))


def _check_source(data_config: ml_collections.ConfigDict, source: Any) -> None:
    """Raises ValueError when the data set cannot give what the (validated) config asks for."""
    if data_config.dataset == "digits" and data_config.num_levels != digits_lib.NUM_LEVELS:
        raise ValueError(
            f"data.num_levels={data_config.num_levels}: the digits have "
            f"{digits_lib.NUM_LEVELS} levels; set data.num_levels={digits_lib.NUM_LEVELS}."
        )
    if source.channels not in (1, 2, 3, 4):
        raise ValueError(f"Cannot convert images with {source.channels} channels to 1 or 3.")
    if data_config.num_classes > 0 and (source.num_classes or 0) > data_config.num_classes:
        raise ValueError(
            f"The dataset has {source.num_classes} classes but data.num_classes is "
            f"{data_config.num_classes}."
        )


def _absolute(split: Any, split_infos: Any) -> Ranges:
    """Returns the (name, start, stop) slices of a split spec or tfds split object."""
    ranges = []
    for instruction in tfds.core.ReadInstruction.from_spec(split).to_absolute(split_infos):
        # TFDS writes a slice that starts at 0 or runs to the end with None.
        start = instruction.from_ or 0
        stop = (
            split_infos[instruction.splitname].num_examples
            if instruction.to is None
            else instruction.to
        )
        ranges.append((instruction.splitname, start, stop))
    return ranges


def _split_ranges(split: str, split_infos: Any, limit: int = -1) -> Ranges:
    """Returns the absolute slices of a TFDS split spec, cut to the first `limit` if positive."""
    ranges = []
    for name, start, stop in _absolute(split, split_infos):
        if limit > 0:
            stop = min(stop, start + max(limit - _count(ranges), 0))
        ranges.append((name, start, stop))
    return ranges


def _process_ranges(
    split: str, split_infos: Any, process_index: int, process_count: int, limit: int = -1
) -> Ranges:
    """Returns this process's share of the split (tfds.even_splits: remainder to the first)."""
    whole = [
        tfds.core.ReadInstruction(name, from_=start, to=stop, unit="abs")
        for name, start, stop in _split_ranges(split, split_infos, limit)
    ]
    share = tfds.even_splits(functools.reduce(operator.add, whole), n=process_count)[process_index]
    return _absolute(share, split_infos)


def _count(ranges: Ranges) -> int:
    return sum(stop - start for _, start, stop in ranges)


def _to_channels(image: tf.Tensor, channels: int, num_channels: int) -> tf.Tensor:
    """Returns float image [H, W, num_channels]: alpha dropped, RGB to BT.601 luma, gray tiled."""
    if channels in (2, 4):
        image = image[..., : channels - 1]  # Drop alpha, as PIL's convert does.
        channels -= 1
    if channels == num_channels:
        return image
    if num_channels == 1:
        return tf.reduce_sum(image * tf.constant(_LUMA_WEIGHTS, tf.float32), -1, keepdims=True)
    return tf.tile(image, [1, 1, 3])


def _center_crop_resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Returns [S, S, C]: the central square, area-shrunk or bilinear-enlarged to image_size."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    side = tf.minimum(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image = image[top : top + side, left : left + side]  # [side, side, C]
    size = [image_size, image_size]
    return tf.case(
        [
            (tf.equal(side, image_size), lambda: image),
            (tf.greater(side, image_size), lambda: tf.image.resize(image, size, method="area")),
        ],
        default=lambda: tf.image.resize(image, size, method="bilinear"),
    )


def _to_levels(
    example: dict[str, tf.Tensor], channels: int, data_config: ml_collections.ConfigDict
) -> dict[str, tf.Tensor]:
    """Returns {"image": integer levels [S, S, C] in [0, num_levels), "label": int32}."""
    image = tf.cast(example["image"], tf.float32)
    image = _to_channels(image, channels, data_config.num_channels)
    image = _center_crop_resize(image, data_config.image_size)
    # Rounding back to integer levels keeps resized pixels on the data's discrete grid, which the
    # discretized likelihood (bits/dim) assumes.
    image = tf.clip_by_value(tf.round(image), 0.0, float(data_config.num_levels - 1))
    # Small integers until batching: a shuffle buffer of uint8 takes a quarter of float32's memory.
    image = tf.cast(image, tf.uint8 if data_config.num_levels <= 256 else tf.int32)
    size = data_config.image_size
    image = tf.ensure_shape(image, [size, size, data_config.num_channels])
    return {"image": image, "label": example["label"]}


def _fits_cache(data_config: ml_collections.ConfigDict, num_examples: int) -> bool:
    """Returns whether num_examples decoded images fit in data.cache_mib (0 turns caching off)."""
    size, channels = data_config.image_size, data_config.num_channels
    item_bytes = size * size * channels * (1 if data_config.num_levels <= 256 else 4)
    limit = data_config.get("cache_mib", 0)
    return limit > 0 and num_examples * item_bytes <= limit * 2**20


def _to_unit_range(levels: tf.Tensor, num_levels: int) -> tf.Tensor:
    """Returns integer levels as float32 in [-1, 1] (diffax.images.from_levels)."""
    return images_lib.from_levels(tf.cast(levels, tf.float32), num_levels)


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index {index} is not in [0, {count}).")
    return index, count


def num_examples(data_config: ml_collections.ConfigDict, split: str) -> int:
    """Returns the examples of split over all processes (image folders: files, bad ones too)."""
    source = _open_source(data_config)
    return _count(_split_ranges(split, source.split_infos))


def _with_caption_tokens(
    ds: tf.data.Dataset,
    data_config: ml_collections.ConfigDict,
    seed: int,
    epoch_size: int,
    epoch: tf.Tensor | None = None,
) -> tf.data.Dataset:
    """Returns ds with "tokens" int32 [text_length]: each example's caption from its label by a
    training template (diffax.datasets.captions), as byte tokens (models.text_encoder).

    epoch=None: ds's example i always gets template_indices(seed, i). Otherwise the template of
    the i-th example read in this epoch is drawn afresh, keyed by (seed, epoch, i).
    """
    table = tf.constant(captions_lib.token_table(data_config.text_length))  # [templates * 10, L]
    num_digits, num_templates = len(captions_lib.DIGIT_WORDS), len(captions_lib.TRAIN_TEMPLATES)
    if epoch is None:
        fixed = tf.constant(captions_lib.template_indices(seed, epoch_size, "train"))

    def add_tokens(position: tf.Tensor, example: dict) -> dict:
        if epoch is None:
            template = tf.gather(fixed, position)
        else:
            key = tf.stack([tf.constant(seed, tf.int64), epoch * epoch_size + position])
            template = tf.random.stateless_uniform([], key, 0, num_templates, dtype=tf.int32)
        row = template * num_digits + tf.cast(example["label"], tf.int32)
        return {**example, "tokens": tf.gather(table, row)}

    return ds.enumerate().map(add_tokens, num_parallel_calls=tf.data.AUTOTUNE)


def create_train_iterator(
    data_config: ml_collections.ConfigDict,
    batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    start_batch: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Returns endless shuffled batches of this process's shard of data.train_split.

    The stream is a fixed function of (seed, process): start_batch > 0 resumes it after that many
    batches, so a restored run sees exactly the batches an uninterrupted one would.

    Yields {"image": float32 [batch_size, S, S, C] in [-1, 1], "label": int32 [batch_size]}, and
    with data.text_length > 0 "tokens": int32 [batch_size, text_length], each example's caption
    (digits: written from its label by a training template drawn afresh each epoch, or fixed per
    example with data.fixed_captions), or with data.text_embeddings "context" float32
    [batch_size, L, D] and "context_mask" bool [batch_size, L], each example's stored embedding
    (diffax.text_embeddings); batch_size is per process. Fails here, not at the first batch, if
    the data are missing.
    """
    process_index, process_count = _process(process_index, process_count)
    source = _open_source(data_config)
    _check_source(data_config, source)
    ranges = _process_ranges(
        data_config.train_split, source.split_infos, process_index, process_count
    )
    if _count(ranges) == 0:
        raise ValueError(f"Process {process_index} has no examples of {data_config.train_split}.")
    logging.info("Process %d trains on %s of %s.", process_index, ranges, data_config.dataset)
    # Independent streams per process for file order, buffer order, flips and captions.
    file_seed, shuffle_seed, flip_seed, caption_seed = (
        int(s) for s in np.random.SeedSequence([seed, process_index]).generate_state(4) >> 1
    )
    stored = bool(data_config.get("text_embeddings"))
    # Stored embeddings are found by each example's position in the split: read in file order
    # (tf.data's shuffle below still shuffles the examples).
    base = source.read(ranges, shuffle_files=not stored, seed=file_seed)
    base = base.map(
        functools.partial(_to_levels, channels=source.channels, data_config=data_config),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    epoch_size = int(base.cardinality())
    if epoch_size < 0:  # Unknown to tf.data: the ranges hold exactly the examples read.
        epoch_size = _count(ranges)
    if _fits_cache(data_config, epoch_size):
        # Later epochs replay the first one's decoded examples in the same order: the same stream,
        # without decoding every image again (18.7 ms of host CPU per digits batch of 128).
        base = base.cache()
    contexts = None
    if stored:
        contexts = _stored_contexts(data_config, ranges, epoch_size)
        base = base.enumerate().map(lambda position, example: {**example, "position": position})
    captioned = not stored and data_config.get("text_length", 0) > 0
    fixed_captions = captioned and data_config.get("fixed_captions", False)
    if fixed_captions:  # Each example's one caption rides with it through every epoch.
        base = _with_caption_tokens(base, data_config, seed, epoch_size)
    draw_captions = captioned and not fixed_captions
    flip = data_config.random_flip

    def epoch(index: tf.Tensor) -> tf.data.Dataset:
        # Epoch e's order depends on (seed, process, e) alone, so a resumed run can start at
        # epoch e without replaying the ones before it.
        ds = base.shuffle(
            data_config.shuffle_buffer,
            seed=tf.constant(shuffle_seed, tf.int64) + index,
            reshuffle_each_iteration=False,
        )
        if draw_captions:
            ds = _with_caption_tokens(ds, data_config, caption_seed, epoch_size, index)
        if not flip:
            return ds

        def flip_example(position: tf.Tensor, example: dict) -> dict:
            # A stateless flip keyed by (seed, position in the stream) is reproducible.
            key = tf.stack([tf.constant(flip_seed, tf.int64), index * epoch_size + position])
            image = tf.image.stateless_random_flip_left_right(example["image"], seed=key)
            return {**example, "image": image}

        return ds.enumerate().map(flip_example)

    # Resuming after start_batch batches reads at most one epoch: skip whole epochs by index,
    # then the consumed examples of the current one. (Skip examples, not batches: tf.data's
    # default rewrites reorder a skip placed after a batch, seen with TF 2.21.)
    first_epoch, offset = divmod(start_batch * batch_size, epoch_size)
    ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch)
    if offset:
        ds = ds.skip(offset)
    ds = ds.batch(batch_size, drop_remainder=True)
    num_levels = data_config.num_levels
    ds = ds.map(
        lambda batch: {**batch, "image": _to_unit_range(batch["image"], num_levels)},
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    ds = ds.prefetch(tf.data.AUTOTUNE)
    if contexts is None:
        return iter(tfds.as_numpy(ds))
    return _with_stored_contexts(tfds.as_numpy(ds), *contexts)


def _stored_contexts(
    data_config: ml_collections.ConfigDict, ranges: Ranges, epoch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (embeddings [epoch_size, L, D], mask [epoch_size, L]) of this process's examples in
    read order, from data.text_embeddings (diffax.text_embeddings); ValueError naming the file
    if one is missing."""
    from diffax import text_embeddings

    tables, embeddings, masks = {}, [], []
    for name, start, stop in ranges:
        if name not in tables:
            tables[name] = text_embeddings.load(data_config, name)
        rows = tables[name].rows(np.arange(start, stop))
        embeddings.append(tables[name].embeddings[rows])
        masks.append(tables[name].mask[rows])
    embeddings, masks = np.concatenate(embeddings), np.concatenate(masks)
    if len(embeddings) != epoch_size:
        raise ValueError(
            f"data.text_embeddings: the split read {epoch_size} examples but its ranges hold "
            f"{len(embeddings)}; the rows cannot be aligned."
        )
    return embeddings, masks


def _with_stored_contexts(
    batches: Iterator[dict[str, np.ndarray]], embeddings: np.ndarray, masks: np.ndarray
) -> Iterator[dict[str, np.ndarray]]:
    """Yields batches whose "position" became "context" float32 [b, L, D] and "context_mask"
    bool [b, L]: the stored rows of those examples, looked up on the host."""
    for batch in batches:
        position = batch.pop("position")
        batch["context"] = embeddings[position].astype(np.float32)
        batch["context_mask"] = masks[position]
        yield batch


def create_eval_iterator(
    data_config: ml_collections.ConfigDict,
    batch_size: int,
    split: str | None = None,
    num_examples: int = -1,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Returns one ordered pass over this process's shard of split (default data.eval_split).

    Yields {"image": float32 [batch_size, S, S, C], "label": int32 [batch_size], "mask": float32
    [batch_size]} (mask 1 real, 0 padding). num_examples > 0 keeps the split's first examples.
    Every process yields the same number of batches, so collective eval steps stay in lockstep.
    """
    process_index, process_count = _process(process_index, process_count)
    source = _open_source(data_config)
    _check_source(data_config, source)
    split = split or data_config.eval_split
    shares = [
        _process_ranges(split, source.split_infos, p, process_count, num_examples)
        for p in range(process_count)
    ]
    num_batches = math.ceil(max(_count(r) for r in shares) / batch_size)
    ranges = shares[process_index]
    size, channels = data_config.image_size, data_config.num_channels
    padding = {
        "image": np.zeros((size, size, channels), np.float32),
        "label": np.int32(0),
        "mask": np.float32(0.0),
    }
    if _count(ranges):
        ds = source.read(ranges)
        level_fn = functools.partial(_to_levels, channels=source.channels, data_config=data_config)

        def preprocess(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            example = level_fn(example)
            return {
                "image": _to_unit_range(example["image"], data_config.num_levels),
                "label": example["label"],
                "mask": tf.constant(1.0, tf.float32),
            }

        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = tf.data.Dataset.from_tensors(padding).take(0)
    # Endless padding cut at num_batches * batch_size: no count of the real examples is needed
    # (image folders may have skipped undecodable files), and every batch has the static shape.
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
    ds = ds.take(num_batches * batch_size).batch(batch_size, drop_remainder=True)
    return iter(tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE)))


def eval_split_examples(
    data_config: ml_collections.ConfigDict, num_examples: int = -1, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images float32 [n, H, W, C] in [-1, 1], labels int32 [n]): the first num_examples
    (-1: all) of eval_split.

    Every process reads the whole split (padding rows dropped), so each gets the same examples.
    """
    iterator = create_eval_iterator(
        data_config, batch_size, num_examples=num_examples, process_index=0, process_count=1
    )
    batches = [(b["image"][b["mask"] > 0], b["label"][b["mask"] > 0]) for b in iterator]
    return (
        np.concatenate([images for images, _ in batches]),
        np.concatenate([labels for _, labels in batches]).astype(np.int32),
    )


def eval_split_images(
    data_config: ml_collections.ConfigDict, num_examples: int = -1, batch_size: int = 256
) -> np.ndarray:
    """Returns float32 [n, H, W, C] in [-1, 1]: the first num_examples (-1: all) of eval_split."""
    return eval_split_examples(data_config, num_examples, batch_size)[0]


def split_labels(data_config: ml_collections.ConfigDict, split: str) -> np.ndarray:
    """Returns int32 [N]: the labels of split's examples in the split's order (every process
    reads them all)."""
    batches = create_eval_iterator(data_config, 256, split=split, process_index=0, process_count=1)
    return np.concatenate([b["label"][b["mask"] > 0] for b in batches]).astype(np.int32)
