"""Text embeddings computed outside diffax (CLIP, T5, ...) and stored beside the data.

`data.text_embeddings` is a path pattern holding `{split}`, e.g. `/data/emb/{split}.npz`; the split
name (the TFDS split before any slice: "train[:90%]" -> "train") fills it, one .npz per split:

    embeddings  [N, L, D] float16 or float32  the encoder's per-token output (L = data.text_length,
                                              D = model.text.width: the cross-attention's context)
    mask        [N, L] bool                   True on real tokens; False keys get zero weight
    index       [N] integer                   the example of the split each row belongs to: its
                                              0-based position in the split's order; unique

Rows may come in any order and must cover every example the run reads. The model cross-attends to
`embeddings` with `mask` in place of diffax's own encoder (`text_encoder.ContextConditioned`); the
null context of classifier-free guidance is zero embeddings with an all-False mask (see
`text_encoder.null_context` for why that is exactly "no text").
"""

import dataclasses
import os
import zipfile

import ml_collections
import numpy as np

KEYS = ("embeddings", "mask", "index")
EMBEDDING_DTYPES = ("float16", "float32")


@dataclasses.dataclass(frozen=True)
class ContextTable:
    """One split's stored contexts, rows sorted by example index."""

    embeddings: np.ndarray  # [N, L, D] float16 or float32.
    mask: np.ndarray  # [N, L] bool.
    index: np.ndarray  # [N] int64, increasing.
    path: str

    def rows(self, examples: np.ndarray) -> np.ndarray:
        """Returns the row of each example index [n]; ValueError naming the file if one lacks."""
        examples = np.asarray(examples, np.int64)
        rows = np.minimum(np.searchsorted(self.index, examples), len(self.index) - 1)
        missing = examples[self.index[rows] != examples]
        if len(missing):
            raise ValueError(
                f"{self.path} has no embeddings for example {int(missing[0])} of its split "
                f"({len(missing)} missing): its 'index' must list every example the run reads."
            )
        return rows


def split_name(split: str) -> str:
    """Returns the split's base name: "train[:90%]" -> "train" (the index is into it)."""
    return split.split("[", 1)[0].strip()


def path_for(pattern: str, split: str) -> str:
    """Returns the .npz path of split under data.text_embeddings's pattern."""
    return pattern.replace("{split}", split_name(split))


def _headers(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Returns {key: (shape, dtype)} of the arrays in an .npz without reading them."""
    headers = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            with archive.open(name) as f:
                major, _ = np.lib.format.read_magic(f)
                read = (
                    np.lib.format.read_array_header_1_0
                    if major == 1
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read(f)
            headers[name.removesuffix(".npy")] = (tuple(shape), np.dtype(dtype))
    return headers


def check_file(
    path: str, length: int, width: int | None, field: str = "data.text_embeddings"
) -> int:
    """Returns N after checking the file's keys, dtypes and shapes against L = length and
    D = width (model.text.width; None: any); ValueError in one sentence naming the file and what
    is accepted."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{field}: no embeddings file {path} (the pattern's {{split}} is filled with the "
            "split name; one .npz per split with embeddings [N, L, D], mask [N, L], index [N])."
        )
    try:
        headers = _headers(path)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{field}: {path} is not a readable .npz ({e}).") from None
    absent = [k for k in KEYS if k not in headers]
    if absent:
        raise ValueError(
            f"{field}: {path} lacks {', '.join(map(repr, absent))}; it needs embeddings "
            "[N, L, D] float16/float32, mask [N, L] bool and index [N] integer."
        )
    (e_shape, e_dtype), (m_shape, m_dtype), (i_shape, i_dtype) = (headers[k] for k in KEYS)
    if len(e_shape) != 3 or e_dtype.name not in EMBEDDING_DTYPES:
        raise ValueError(
            f"{field}: {path}'s embeddings are {e_dtype.name} {list(e_shape)}; accepted: "
            "[N, L, D] float16 or float32."
        )
    if m_dtype != np.bool_ or len(i_shape) != 1 or i_dtype.kind not in "iu":
        raise ValueError(
            f"{field}: {path} has mask {m_dtype.name} {list(m_shape)} and index {i_dtype.name} "
            f"{list(i_shape)}; accepted: mask [N, L] bool, index [N] integer."
        )
    count, file_length, file_width = e_shape
    if m_shape != (count, file_length) or i_shape != (count,):
        raise ValueError(
            f"{field}: {path}'s arrays are misaligned: embeddings {list(e_shape)}, mask "
            f"{list(m_shape)}, index {list(i_shape)}; mask must be [N, L] and index [N]."
        )
    if width is not None and file_width != width:
        raise ValueError(
            f"{field}: {path} holds {file_width}-wide embeddings but model.text.width={width}: "
            f"set model.text.width={file_width} (the width of the context the model attends to)."
        )
    if file_length != length:
        raise ValueError(
            f"{field}: {path} holds {file_length} tokens per example but "
            f"data.text_length={length}: set data.text_length={file_length}."
        )
    return count


def check(data_config: ml_collections.ConfigDict, width: int) -> None:
    """Checks the files of data.train_split and data.eval_split against data.text_length and the
    contexts' `width` (model.text.width); headers only: no array is read."""
    pattern = data_config.text_embeddings
    for split in dict.fromkeys((data_config.train_split, data_config.eval_split)):
        check_file(path_for(pattern, split), data_config.text_length, width)


def load(
    data_config: ml_collections.ConfigDict, split: str, width: int | None = None
) -> ContextTable:
    """Returns split's table from data.text_embeddings, checked and sorted by example index."""
    path = path_for(data_config.text_embeddings, split)
    check_file(path, data_config.text_length, width)
    with np.load(path) as f:
        embeddings, mask, index = (f[k] for k in KEYS)
    order = np.argsort(index, kind="stable")
    index = index[order].astype(np.int64)
    if len(index) and (index[0] < 0 or np.any(np.diff(index) == 0)):
        raise ValueError(
            f"data.text_embeddings: {path}'s index must hold distinct example positions >= 0 "
            f"(found {'a negative one' if index[0] < 0 else 'a repeated one'})."
        )
    return ContextTable(embeddings[order], mask[order], index, path)
