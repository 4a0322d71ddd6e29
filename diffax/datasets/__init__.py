"""Datasets diffax provides beyond TFDS: the offline `digits` builder and image folders."""

from diffax.datasets import digits, image_folder

__all__ = ["digits", "image_folder"]
