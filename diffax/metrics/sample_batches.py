"""guided-diffusion's sample and reference batches, scored with its evaluator's five numbers.

The ADM and DiT papers' FID, sFID, Inception Score, precision and recall come from
guided-diffusion's `evaluations/evaluator.py` run on two .npz files (facts from it and its README):

- A sample batch: "arr_0" uint8 images [N, H, W, 3] (pixels 0..255), optionally "arr_1" [N] class
  labels (which no metric reads).
- A reference batch (`VIRTUAL_imagenet256_labeled.npz` and the others): "arr_0" reference images,
  and the statistics of the whole dataset, computed once: "mu" [2048], "sigma" [2048, 2048] of the
  pool features and "mu_s" [2023], "sigma_s" [2023, 2023] of the spatial features. When stored they
  are used AS GIVEN; only without them are they computed from "arr_0". "arr_0" always gives the
  reference features of precision and recall.

The five numbers, under the names the evaluator prints:

- "Inception Score": `fid.inception_score` of the samples' bias-free logits (pool features times
  `softmax/weights`), in consecutive splits of 5000, the mean over splits.
- "FID": the Fréchet distance of the samples' pool-feature statistics to the reference's.
- "sFID": the same on the spatial features: the graph's mixed_6/conv ([17, 17, 192], see
  `diffax.metrics.inception`), first 7 channels, flattened in [H, W, C] order: 17 * 17 * 7 = 2023.
- "Precision", "Recall": `diffax.metrics.manifold.precision_recall` (k = 3) of the samples' pool
  features against the reference images' pool features.

Images go into the network as the evaluator feeds them: their float 0..255 pixels, resized to 299
(TF1 bilinear) and mapped to (x - 128) / 128 by the 2015 graph's own ops. Statistics are float64
mean and unbiased covariance (`fid.compute_statistics`).
"""

import dataclasses
import zipfile
from collections.abc import Callable, Iterator

import jax
import numpy as np

from diffax.metrics import fid, inception, manifold

POOL_DIM = 2048
SPATIAL_CHANNELS = 7  # evaluator.py: spatial = spatial[..., :7]
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS  # 2023
IS_SPLIT_SIZE = 5000  # evaluator.py: compute_inception_score(..., split_size=5000)
STATISTICS_KEYS = {"mu": (POOL_DIM,), "sigma": (POOL_DIM, POOL_DIM)}
STATISTICS_KEYS |= {"mu_s": (SPATIAL_DIM,), "sigma_s": (SPATIAL_DIM, SPATIAL_DIM)}
NAMES = ("Inception Score", "FID", "sFID", "Precision", "Recall")

# uint8 pixels [B, H, W, 3] -> (pool [B, 2048], logits [B, 1008], spatial [B, 2023]), float32.
FeatureFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class NpzImages:
    """uint8 images [N, H, W, 3] stored under `key` in the .npz at `path`, read in batches."""

    path: str
    key: str
    shape: tuple[int, ...]
    fortran_order: bool

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Yields uint8 [<= batch_size, H, W, 3] in order, never holding more in memory."""
        if self.fortran_order:  # Not streamable; np.save writes C order unless asked.
            with np.load(self.path) as data:
                images = np.ascontiguousarray(data[self.key])
            yield from (images[i : i + batch_size] for i in range(0, len(images), batch_size))
            return
        image_bytes = int(np.prod(self.shape[1:]))
        with zipfile.ZipFile(self.path) as archive, archive.open(f"{self.key}.npy") as member:
            _read_header(member)
            for start in range(0, self.shape[0], batch_size):
                count = min(batch_size, self.shape[0] - start)
                data = member.read(count * image_bytes)
                if len(data) != count * image_bytes:
                    raise ValueError(f"{self.path!r}: {self.key!r} ends early (truncated file).")
                yield np.frombuffer(data, np.uint8).reshape((count,) + self.shape[1:])


@dataclasses.dataclass(frozen=True)
class Features:
    """Network features of a set of images, float32."""

    pool: np.ndarray  # [N, 2048]
    logits: np.ndarray  # [N, 1008], bias-free
    spatial: np.ndarray  # [N, 2023]


def _read_header(member) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Returns (shape, fortran_order, dtype) of an .npy stream, leaving it at the data."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(member)
    raise ValueError(f".npy format version {version} (expected 1.0 or 2.0)")


def _headers(path: str) -> dict[str, tuple[tuple[int, ...], bool, np.dtype]]:
    """Returns {key: (shape, fortran_order, dtype)} of every array in an .npz, reading no data."""
    try:
        with zipfile.ZipFile(path) as archive:
            headers = {}
            for name in archive.namelist():
                if name.endswith(".npy"):
                    with archive.open(name) as member:
                        headers[name[: -len(".npy")]] = _read_header(member)
            return headers
    except (zipfile.BadZipFile, ValueError) as error:
        raise ValueError(f"Cannot read {path!r} as an .npz file: {error}") from error


def _images(path: str, headers: dict, role: str, min_images: int) -> NpzImages:
    """Returns the checked "arr_0" of a sample or reference batch (role names it in errors)."""
    if "arr_0" not in headers:
        raise ValueError(
            f"{role} {path!r} lacks key 'arr_0' (uint8 images [N, H, W, 3], guided-diffusion's "
            f"batch format); found keys {sorted(headers)}"
        )
    shape, fortran_order, dtype = headers["arr_0"]
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or shape[0] < min_images:
        raise ValueError(
            f"{role} {path!r}: 'arr_0' must be uint8 images [N >= {min_images}, H, W, 3], got "
            f"{dtype} {list(shape)}"
        )
    return NpzImages(path, "arr_0", tuple(shape), fortran_order)


def open_sample_batch(path: str) -> NpzImages:
    """Returns the images of a sample batch, checked ("arr_0"; "arr_1" labels [N] if present)."""
    headers = _headers(path)
    images = _images(path, headers, "Sample batch", manifold.NEIGHBOURHOOD_SIZE + 1)
    if "arr_1" in headers:
        shape, _, dtype = headers["arr_1"]
        if tuple(shape) != images.shape[:1] or dtype.kind not in "iu":
            raise ValueError(
                f"Sample batch {path!r}: 'arr_1' must be integer labels [{images.shape[0]}], got "
                f"{dtype} {list(shape)}"
            )
    return images


def is_reference_batch(path: str) -> bool:
    """Returns whether an .npz is a guided-diffusion reference batch ("arr_0" or "mu_s" in it)."""
    return bool({"arr_0", "mu_s"} & set(_headers(path)))


def open_reference_batch(path: str) -> tuple[NpzImages, dict[str, np.ndarray] | None]:
    """Returns (its images, its stored {"mu", "sigma", "mu_s", "sigma_s"} as float64 or None)."""
    headers = _headers(path)
    stored = sorted(set(STATISTICS_KEYS) & set(headers))
    if "arr_0" not in headers:
        raise ValueError(
            f"Reference batch {path!r} lacks key 'arr_0' (uint8 reference images [N, H, W, 3], "
            f"which precision and recall need); found keys {sorted(headers)}"
        )
    images = _images(path, headers, "Reference batch", manifold.NEIGHBOURHOOD_SIZE + 1)
    if not stored:
        return images, None
    for key, shape in STATISTICS_KEYS.items():
        if key not in headers:
            raise ValueError(
                f"Reference batch {path!r} has {stored} but lacks key {key!r} {list(shape)}: "
                f"store all of {list(STATISTICS_KEYS)} or none (then they come from 'arr_0')"
            )
        if tuple(headers[key][0]) != shape:
            raise ValueError(
                f"Reference batch {path!r}: {key!r} must be {list(shape)}, got "
                f"{list(headers[key][0])}"
            )
    with np.load(path, allow_pickle=False) as data:
        stats = {key: np.asarray(data[key], np.float64) for key in STATISTICS_KEYS}
    return images, stats


_MODEL = inception.InceptionV3FID(include_logits_bias=False, with_spatial=True)


@jax.jit
def _inception_features(variables: dict, pixels: jax.Array) -> tuple[jax.Array, ...]:
    """Returns (pool [B, 2048], bias-free logits [B, 1008], spatial [B, 2023]) of uint8 pixels."""
    pool, logits, mixed_6_conv = _MODEL.apply(variables, inception.uint8_to_inception_input(pixels))
    spatial = mixed_6_conv[..., :SPATIAL_CHANNELS]  # [B, 17, 17, 7]
    return pool, logits, spatial.reshape(spatial.shape[0], -1)  # [H, W, C] order, as the graph's


def inception_feature_fn(weights_path: str, batch_size: int) -> FeatureFn:
    """Returns the FeatureFn of the FID Inception at weights_path, batches padded to batch_size
    (one compilation for every batch)."""
    variables = inception.load_params(weights_path, _MODEL)

    def feature_fn(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        count = pixels.shape[0]
        padded = np.pad(pixels, ((0, batch_size - count),) + ((0, 0),) * 3)
        return tuple(np.asarray(x)[:count] for x in _inception_features(variables, padded))

    return feature_fn


def features(feature_fn: FeatureFn, images: NpzImages | np.ndarray, batch_size: int) -> Features:
    """Returns the Features of images (an .npz batch, or uint8 [N, H, W, 3] in memory)."""
    if isinstance(images, NpzImages):
        batches = images.batches(batch_size)
    else:
        batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
    parts = [feature_fn(batch) for batch in batches]
    pool, logits, spatial = (
        np.concatenate(arrays).astype(np.float32) for arrays in zip(*parts, strict=True)
    )
    return Features(pool=pool, logits=logits, spatial=spatial)


def evaluator_scores(
    samples: Features, reference: Features, reference_stats: dict[str, np.ndarray] | None
) -> dict[str, float]:
    """Returns {"Inception Score", "FID", "sFID", "Precision", "Recall"} (module doc); the reference
    statistics are reference_stats as given, or when None those of the reference features."""
    if reference_stats is None:
        pool_stats = fid.compute_statistics(reference.pool)
        spatial_stats = fid.compute_statistics(reference.spatial)
        reference_stats = {"mu": pool_stats["mu"], "sigma": pool_stats["sigma"]}
        reference_stats |= {"mu_s": spatial_stats["mu"], "sigma_s": spatial_stats["sigma"]}
    pool_stats = fid.compute_statistics(samples.pool)
    spatial_stats = fid.compute_statistics(samples.spatial)
    pr = manifold.precision_recall(reference.pool, samples.pool)
    scores = {
        "Inception Score": fid.inception_score(
            samples.logits, from_logits=True, split_size=IS_SPLIT_SIZE
        )[0],
        "FID": fid.frechet_distance(
            pool_stats["mu"], pool_stats["sigma"], reference_stats["mu"], reference_stats["sigma"]
        ),
        "sFID": fid.frechet_distance(
            spatial_stats["mu"],
            spatial_stats["sigma"],
            reference_stats["mu_s"],
            reference_stats["sigma_s"],
        ),
        "Precision": pr["precision"],
        "Recall": pr["recall"],
    }
    return {name: float(scores[name]) for name in NAMES}


def score(
    samples: NpzImages | np.ndarray,
    reference_images: NpzImages,
    reference_stats: dict[str, np.ndarray] | None,
    feature_fn: FeatureFn,
    batch_size: int = 64,
) -> dict[str, float]:
    """Returns the five numbers of samples (a sample batch, or uint8 [N, H, W, 3]) against a
    reference batch opened by open_reference_batch."""
    reference = features(feature_fn, reference_images, batch_size)
    return evaluator_scores(features(feature_fn, samples, batch_size), reference, reference_stats)
