"""Tests for diffax.datasets.captions: digit captions from labels, with held-out templates."""

import numpy as np
import pytest

from diffax.datasets import captions


def test_captions_are_a_fixed_function_of_seed_and_index():
    labels = np.arange(50) % 10
    first = captions.captions(labels, seed=3)
    assert first == captions.captions(labels, seed=3)
    assert first[:20] == captions.captions(labels[:20], seed=3)  # Example i's alone decides.
    assert first != captions.captions(labels, seed=4)


def test_every_caption_names_its_digit_as_word_or_numeral():
    for split in captions.SPLITS:
        for label, caption in enumerate(captions.captions(np.arange(10), seed=0, split=split)):
            words = caption.replace(",", " ").split()
            assert captions.DIGIT_WORDS[label] in words or str(label) in caption


def test_held_out_templates_are_disjoint_from_training_and_never_used_by_train_split():
    assert not set(captions.TRAIN_TEMPLATES) & set(captions.HELDOUT_TEMPLATES)
    train = set(captions.captions(np.arange(2000) % 10, seed=0, split="train"))
    test = set(captions.captions(np.arange(2000) % 10, seed=0, split="test"))
    assert not train & test
    assert train == {c for row in captions.caption_table("train") for c in row}  # All used.
    assert len(test) == 10 * len(captions.HELDOUT_TEMPLATES)
    # Not even as a part: "handwritten 7" inside "a handwritten 7" would be seen in training.
    assert not [(a, b) for a in train for b in test if a in b or b in a]


def test_bad_label_or_split_is_one_sentence():
    with pytest.raises(ValueError, match="label in 0..9, got 12"):
        captions.fill("the digit {numeral}", 12)
    with pytest.raises(ValueError, match="'val' is not one of 'train', 'test'"):
        captions.template_indices(0, 3, "val")
