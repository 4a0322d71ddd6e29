"""Sample grids and arrays written into a workdir, with the layout the model's labels suggest."""

import os

import jax
import ml_collections
import numpy as np

from diffax import build, images


def save_samples(
    config: ml_collections.ConfigDict,
    workdir: str,
    name: str,
    samples: np.ndarray,
    labels=None,
    columns: int | None = None,
) -> str:
    """Writes the samples' grid and .npz into the workdir on process 0; returns the png path."""
    if jax.process_index() != 0:
        return os.path.join(workdir, name + ".png")
    classes = build.num_classes(config)
    if build.is_text_conditioned(config) and labels is not None:
        classes = config.data.num_classes  # Held-out prompts cycle through the digits.
    columns = columns or images.grid_columns(len(samples), classes)
    return images.save_samples(
        workdir, name, samples, config.data.num_levels, labels, columns=columns
    )
