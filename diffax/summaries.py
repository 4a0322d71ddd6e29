"""TensorBoard scalars, written by process 0 only."""

import os

import jax


def create_writer(workdir: str):
    """Returns a TensorBoard event writer for process 0, None elsewhere."""
    if jax.process_index() != 0:
        return None
    import tensorflow as tf

    return tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))


def write_scalars(writer, step: int, scalars: dict[str, float]) -> None:
    """Writes scalars to the TensorBoard event file (no-op without a writer)."""
    if writer is None:
        return
    import tensorflow as tf

    with writer.as_default(step=step):
        for name, value in scalars.items():
            tf.summary.scalar(name, value)
    writer.flush()
