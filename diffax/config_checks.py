"""The checks a config field goes through, each failing with one sentence naming the field.

Shared by `diffax.validation` (the whole config, before anything is built) and each task's own
`check` (`diffax.tasks`), so the wording is the same everywhere.
"""

import math


class ConfigError(ValueError):
    """A config field holds a value diffax cannot use; the message names field and choices."""


def choice(value, field: str, allowed: tuple) -> None:
    """Checks that value is one of allowed."""
    if value not in allowed:
        raise ConfigError(f"{field}={value!r} is not one of {', '.join(map(repr, allowed))}.")


def positive_int(value, field: str, allow_zero: bool = False) -> None:
    """Checks a positive (or, with allow_zero, non-negative) integer; bools are refused."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        kind = "a non-negative" if allow_zero else "a positive"
        raise ConfigError(f"{field}={value!r} must be {kind} integer.")


def count_or_all(value, field: str, whole: str) -> None:
    """Checks a positive integer, or -1 for all of `whole` (0 is refused: it reads as "none")."""
    ok = isinstance(value, int) and not isinstance(value, bool) and (value > 0 or value == -1)
    if not ok:
        raise ConfigError(f"{field}={value!r} must be a positive integer, or -1 for {whole}.")


def number(
    value,
    field: str,
    low: float = -math.inf,
    high: float = math.inf,
    high_open: bool = False,
    low_open: bool = False,
) -> None:
    """Checks a finite real number in [low, high] (an end open with low_open / high_open); bools,
    None, NaN and infinities are refused (an infinite rate or scale is never what was meant)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (isinstance(value, int) or math.isfinite(value))
    ok = ok and (low < value if low_open else low <= value)
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        raise ConfigError(
            f"{field}={value!r} must be a finite number{_interval(low, high, low_open, high_open)}."
        )


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    """Returns " in [0, 1)", " > 0", " >= -1" or "" for the accepted range of number()."""
    if math.isinf(high) and math.isinf(low):
        return ""
    if math.isinf(high):
        return f" {'>' if low_open else '>='} {low:g}"
    if math.isinf(low):
        return f" {'<' if high_open else '<='} {high:g}"
    return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def int_tuple(value, field: str, allow_empty: bool) -> tuple:
    """Checks a tuple (or list) of positive ints."""
    ok = isinstance(value, (tuple, list)) and (allow_empty or len(value) > 0)
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    if not ok:
        raise ConfigError(f"{field}={value!r} must be a tuple of positive integers.")
    return tuple(value)


# The flat config.model fields of diffax before config.model was split by part (2026-12), each
# with its new place; "unet" fields belong to model.classifier for a noisy classifier.
_UNET_FIELDS = (
    "ch channel_mult num_res_blocks attention_resolutions num_head_channels dropout "
    "resblock_updown use_scale_shift_norm"
).split()
MOVED_MODEL_FIELDS = {
    **{name: f"unet.{name}" for name in _UNET_FIELDS + ["num_heads", "fourier_features"]},
    **{name: f"dit.{name}" for name in ("patch_size", "hidden_size", "depth", "mlp_ratio")},
    "text_width": "text.width",
    "text_depth": "text.depth",
    "text_heads": "text.num_heads",
    "text_positions": "text.positions",
    "text_pool": "text.pool",
    **{
        name: f"autoencoder.{name}"
        for name in ("block_out_channels", "layers_per_block", "z_channels", "norm_num_groups")
    },
    "disc_ndf": "discriminator.ndf",
    "disc_layers": "discriminator.num_layers",
}


def moved_field(name: str, model_name: str | None = None) -> str:
    """Returns where the old flat field model.<name> lives now (for a noisy classifier, a DiT)."""
    new = MOVED_MODEL_FIELDS[name]
    if model_name == "noisy_classifier" and new.startswith("unet.") and name != "fourier_features":
        return "classifier." + new.split(".", 1)[1]
    if model_name == "dit" and name == "num_heads":
        return "dit.num_heads"
    return new


def check_no_moved_fields(model, model_name: str) -> None:
    """Refuses a config (file or saved) that sets an old flat model field, which nothing reads."""
    moved = [name for name in model if name in MOVED_MODEL_FIELDS]
    if moved:
        pairs = ", ".join(f"model.{n} -> model.{moved_field(n, model_name)}" for n in moved)
        raise ConfigError(
            f"config.model is split by part now: move {pairs} (configs/default.py lists every "
            "field)."
        )


def upgrade_model_section(config: dict) -> dict:
    """Returns a saved config dict with an old flat `model` moved into its parts (the section a
    checkpoint written before the split holds); a current one comes back unchanged."""
    model = dict(config.get("model") or {})
    flat = [name for name in model if name in MOVED_MODEL_FIELDS]
    if not flat:
        return config
    for name in flat:
        value = model.pop(name)
        targets = {MOVED_MODEL_FIELDS[name]}
        if name in _UNET_FIELDS or name == "num_heads":
            targets.add(f"classifier.{name}")
        if name == "num_heads":
            targets.add("dit.num_heads")
        for target in targets:
            section, field = target.split(".")
            model.setdefault(section, {})[field] = value
    return {**config, "model": model}
