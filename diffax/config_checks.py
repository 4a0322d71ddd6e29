"""The checks a config field goes through, each failing with one sentence naming the field.

Shared by `diffax.validation` (the whole config, before anything is built) and each task's own
`check` (`diffax.tasks`), so the wording is the same everywhere.
"""


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


def number(value, field: str, low: float, high: float, high_open: bool = False) -> None:
    """Checks a real number in [low, high] (or [low, high)); bools, None and NaN are refused."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    ok = ok and low <= value and (value < high if high_open else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"{field}={value!r} must be a number in [{low}, {high}{bracket}.")


def int_tuple(value, field: str, allow_empty: bool) -> tuple:
    """Checks a tuple (or list) of positive ints."""
    ok = isinstance(value, (tuple, list)) and (allow_empty or len(value) > 0)
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    if not ok:
        raise ConfigError(f"{field}={value!r} must be a tuple of positive integers.")
    return tuple(value)
