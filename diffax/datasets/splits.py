"""TFDS split specs ("train", "train[:90%]+test"): which named splits a spec reads."""

import tensorflow_datasets as tfds


def split_names(spec) -> list[str]:
    """Returns the split names a TFDS split spec reads, in order ("train[:90%]+test" gives
    ["train", "test"]); ValueError if TFDS cannot parse it."""
    if not isinstance(spec, str):
        raise ValueError(f"split {spec!r} is not a string")
    tfds.core.ReadInstruction.from_spec(spec)  # ValueError on a malformed spec.
    return [part.split("[", 1)[0].strip() for part in spec.split("+")]


def check_splits(data_config, available: tuple[str, ...], source: str, hint: str = "") -> None:
    """Raises ValueError in one sentence if data.train_split or data.eval_split is malformed or
    reads a split other than `available` (the splits `source` has)."""
    for field in ("train_split", "eval_split"):
        spec = data_config[field]
        try:
            names = split_names(spec)
        except ValueError:
            raise ValueError(
                f"data.{field}={spec!r} is not a TFDS split spec such as 'train', 'train[:90%]' "
                "or 'train+test'."
            ) from None
        missing = [name for name in names if name not in available]
        if missing:
            noun = "splits" if len(available) > 1 else "one split"
            raise ValueError(
                f"data.{field}={spec!r} reads the split {missing[0]!r}; {source} has the {noun} "
                f"{' and '.join(map(repr, available))}{hint}."
            )
