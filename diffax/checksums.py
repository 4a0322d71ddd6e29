"""Content digests of arrays: 64 bits per array, computed where the array lives.

A digest sums, modulo 2**32, a mixed hash (murmur3's fmix32) of every element's bits keyed by its
flat index, in two lanes with different seeds (64 bits in all). It is computed in one jitted
reduction: with several processes each one hashes its own shards and the sum is global, so every
process gets the same digest without gathering the array, and the digest does not depend on the
sharding or the process count. Changing any single element always changes it; other damage goes
unnoticed with probability about 2**-64. It guards against accidental damage, not against someone
forging a checkpoint. `record` / `parse_record` are the JSON form `diffax.checkpointing` stores.
"""

import hashlib
import json
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

INTEGRITY_VERSION = 1
CHECKSUM_ALGORITHM = "fmix32-indexed-sum-2x32"
_SEEDS = (0x243F6A88, 0x85A308D3)  # Hex digits of pi; any two distinct constants would do.


class ArrayPrint(NamedTuple):
    """What `fingerprint` records of one array: shape, dtype name, 16-hex-digit digest, finite."""

    shape: tuple[int, ...]
    dtype: str
    digest: str
    finite: bool


def path_name(path: tuple[Any, ...]) -> str:
    """Returns 'a/b/0' for a key path, whatever kind of keys it holds."""
    parts = []
    for key in path:
        for attr in ("name", "key", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def named_leaves(tree: Any) -> list[tuple[str, Any]]:
    """Returns [(path name, leaf)] for every leaf of a pytree, in flattening order."""
    return [(path_name(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _fmix32(x: jax.Array) -> jax.Array:
    """Returns murmur3's 32-bit finaliser of uint32 `x`: a bijection that mixes every bit."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _words(x: jax.Array) -> jax.Array:
    """Returns the bits of `x` as uint32 (one per element; 64-bit types add a last axis of 2)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if jnp.iscomplexobj(x):
        x = jnp.stack([x.real, x.imag], axis=-1)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _leaf_digest(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns the two [] uint32 checksum lanes of `x` and whether all its elements are finite."""
    words = _words(x)
    index = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):  # Row-major flat index, wrapping past 2**32.
        index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * jnp.uint32(
            stride % 2**32
        )
        stride *= words.shape[axis]
    lanes = [
        # fmix32(words ^ key) is a bijection of the element's bits, so any change moves the sum.
        jnp.sum(
            _fmix32(words ^ _fmix32(index * jnp.uint32(0x9E3779B9) + jnp.uint32(s))),
            dtype=jnp.uint32,  # Wraps modulo 2**32.
        )
        for s in _SEEDS
    ]
    inexact = jnp.issubdtype(x.dtype, jnp.inexact)
    finite = jnp.all(jnp.isfinite(x)) if inexact else jnp.array(True)
    return lanes[0], lanes[1], finite


def host_scalar(x: jax.Array) -> Any:
    """Returns a replicated scalar's value; works when other processes hold other devices."""
    return np.asarray(x.addressable_data(0)).item() if isinstance(x, jax.Array) else x


@jax.jit
def _digests(leaves: list[jax.Array]) -> list[tuple[jax.Array, jax.Array, jax.Array]]:
    """Returns _leaf_digest of every leaf, in one program (one dispatch, fused reductions)."""
    return [_leaf_digest(x) for x in leaves]


_digest_one = jax.jit(_leaf_digest)


def fingerprint(tree: Any) -> dict[str, ArrayPrint]:
    """Returns {path name: ArrayPrint} for every array leaf; blocks until the digests are on host.

    Every process must call it (it runs jitted reductions over all devices holding the arrays).
    """
    named = [(n, x if isinstance(x, jax.Array) else jnp.asarray(x)) for n, x in named_leaves(tree)]
    leaves = [x for _, x in named]
    try:
        outputs = _digests(leaves)
    except ValueError:  # Leaves on different sets of devices: one program each.
        outputs = [_digest_one(x) for x in leaves]
    prints = {}
    for (name, x), (lane0, lane1, finite) in zip(named, outputs, strict=True):
        digest = f"{host_scalar(lane0):08x}{host_scalar(lane1):08x}"
        prints[name] = ArrayPrint(tuple(x.shape), str(x.dtype), digest, bool(host_scalar(finite)))
    return prints


def record(prints: dict[str, ArrayPrint]) -> dict[str, Any]:
    """Returns the JSON integrity record of a state's fingerprints, with a digest of itself."""
    arrays = {
        n: {"shape": list(p.shape), "dtype": p.dtype, "digest": p.digest} for n, p in prints.items()
    }
    return {
        "version": INTEGRITY_VERSION,
        "algorithm": CHECKSUM_ALGORITHM,
        "arrays": arrays,
        "record_digest": _json_digest(arrays),
    }


def _json_digest(value: Any) -> str:
    """Returns the SHA-256 of a JSON value written canonically (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def parse_record(record: Any) -> dict[str, dict[str, Any]]:
    """Returns the record's {name: {shape, dtype, digest}}; ValueError if it is not intact."""
    if not isinstance(record, dict) or record.get("version") != INTEGRITY_VERSION:
        raise ValueError("its checksum record has an unknown layout")
    if record.get("algorithm") != CHECKSUM_ALGORITHM:
        raise ValueError(f"its checksum record uses algorithm {record.get('algorithm')!r}")
    arrays = record.get("arrays")
    if not isinstance(arrays, dict) or record.get("record_digest") != _json_digest(arrays):
        raise ValueError("its checksum record is damaged (its own digest does not match)")
    return arrays
