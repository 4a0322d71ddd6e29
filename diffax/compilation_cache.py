"""JAX's persistent compilation cache for the main job: a second run of a config skips XLA.

On by default in `python -m diffax.main`, in `$DIFFAX_COMPILATION_CACHE` or
`$XDG_CACHE_HOME/diffax/jax` (`~/.cache/diffax/jax`); `--compilation_cache=''` (or the variable
set to '') turns it off. A cache JAX is already told about (`JAX_COMPILATION_CACHE_DIR`) is left
as it is. Entries are keyed by the program, the compile options, the XLA flags and the jaxlib
version, so a changed config or upgrade compiles afresh; the folder can be deleted at any time.
"""

import os
from collections.abc import Mapping

import jax
from absl import logging

ENV = "DIFFAX_COMPILATION_CACHE"
JAX_ENV = "JAX_COMPILATION_CACHE_DIR"
HIT, MISS = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"
_counts = {HIT: 0, MISS: 0}


def default_dir(environ: Mapping[str, str] = os.environ) -> str:
    """Returns $XDG_CACHE_HOME/diffax/jax, or ~/.cache/diffax/jax."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "diffax", "jax")


def resolve(flag: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """Returns the folder the cache should use, or None for no diffax-set cache.

    flag: --compilation_cache (None: not given). Given, it wins ('' is off); else JAX's own
    JAX_COMPILATION_CACHE_DIR is left to JAX (None), else $DIFFAX_COMPILATION_CACHE ('' is off),
    else `default_dir`.
    """
    if flag is not None:
        return flag or None
    if environ.get(JAX_ENV):
        return None
    if ENV in environ:
        return environ[ENV] or None
    return default_dir(environ)


def _count(event: str, **kwargs) -> None:
    del kwargs
    if event in _counts:
        _counts[event] += 1


def configure(flag: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """Points JAX's persistent cache at `resolve(flag)`'s folder (created if missing) and counts
    its hits and misses; returns the folder in use, or None when off. A folder that cannot be
    created is logged and the run goes on without the cache."""
    folder = resolve(flag, environ)
    jax.monitoring.register_event_listener(_count)
    if folder is None:
        return environ.get(JAX_ENV) or None
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        logging.warning(
            "The compilation cache %s cannot be created (%s); compiling without it.",
            folder,
            e.strerror,
        )
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    # Only programs that take a while to compile are worth a file (JAX's default is 1 s).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return folder


def counts() -> dict[str, int]:
    """Returns {"hits", "misses"} of the persistent cache in this process so far."""
    return {"hits": _counts[HIT], "misses": _counts[MISS]}
