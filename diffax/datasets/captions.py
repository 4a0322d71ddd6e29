"""Captions for the digits, written from their labels: the offline data of text conditioning.

Each caption is a template filled with the digit as a numeral or a word. The templates are split
in two: TRAIN_TEMPLATES caption the training images, HELDOUT_TEMPLATES are never seen in training
and write the prompts that evaluation samples from, so the reported accuracy measures whether
the model understands new phrasings of the digits, not memorised strings.

Training draws a fresh template each time it reads an image (data.fixed_captions=False), as a
data set with several captions per image is read (COCO has five); data.fixed_captions=True gives
example i the one caption of `template_indices` instead, the caption that
diffax.tools.embed_captions stores for it.
"""

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# {word}: the digit as an English word; {numeral}: as 0-9. Both appear at the start, middle and end
# of training captions, so neither is tied to one position.
TRAIN_TEMPLATES = (
    "a handwritten {word}",
    "the digit {numeral}",
    "{numeral}, written slanted",
    "a picture of the number {word}",
    "number {numeral}",
    "an image of a {word}",
    "a small {numeral} drawn by hand",
    "the numeral {word}",
    "{word}, written by hand",
    "a {word} drawn in pencil",
    "the number {word} on paper",
    "{numeral} in ink",
    # Words that contain a digit's name ("stone" and "phone" hold "one", "weight" "eight",
    # "network" "two", "ninety" "nine"): a byte-level encoder must not read a digit in a substring.
    "a {word} carved in stone",
    "{numeral} on a phone screen",
    "the weight of a {word}",
    "a {word} on the network",
    "{numeral} tilted ninety degrees",
)
HELDOUT_TEMPLATES = (
    "a sketch of the digit {word}",
    "handwritten {numeral}",
    "someone wrote a {word}",
)
SPLITS = {"train": TRAIN_TEMPLATES, "test": HELDOUT_TEMPLATES}


def fill(template: str, label: int) -> str:
    """Returns the template with the digit `label` (0-9) as word and numeral."""
    if not 0 <= int(label) < len(DIGIT_WORDS):
        raise ValueError(f"Digit captions need a label in 0..9, got {label}.")
    return template.format(word=DIGIT_WORDS[int(label)], numeral=int(label))


def template_indices(seed: int, num_examples: int, split: str = "train") -> np.ndarray:
    """Returns int32 [num_examples]: the template of example i of the split, fixed by (seed, i)."""
    templates = _templates(split)
    rng = np.random.default_rng([seed, _SPLIT_KEYS[split]])
    return rng.integers(0, len(templates), num_examples).astype(np.int32)


def captions(labels: np.ndarray, seed: int, split: str = "train") -> list[str]:
    """Returns the caption of each example i with labels[i], by the templates of the split."""
    templates = _templates(split)
    chosen = template_indices(seed, len(labels), split)
    return [fill(templates[j], label) for j, label in zip(chosen, labels, strict=True)]


def token_table(length: int) -> np.ndarray:
    """Returns int32 [templates * 10, length]: each training caption as byte tokens
    (models.text_encoder), template j's caption of digit d in row j * 10 + d."""
    from diffax.models import text_encoder

    return text_encoder.tokenize([c for row in caption_table("train") for c in row], length)


def caption_table(split: str = "train") -> list[list[str]]:
    """Returns [templates][10] captions: every template of the split filled with every digit."""
    return [[fill(t, d) for d in range(len(DIGIT_WORDS))] for t in _templates(split)]


def max_caption_bytes() -> int:
    """Returns the UTF-8 length of the longest caption any template writes."""
    return max(len(fill(t, d).encode()) for ts in SPLITS.values() for t in ts for d in range(10))


_SPLIT_KEYS = {"train": 0, "test": 1}


def _templates(split: str) -> tuple[str, ...]:
    if split not in SPLITS:
        raise ValueError(f"Caption split {split!r} is not one of {', '.join(map(repr, SPLITS))}.")
    return SPLITS[split]
