"""The quick-start digits run with a Diffusion Transformer backbone instead of the U-Net.

The data, process, training and evaluation are configs/digits.py's; only the model changes, to a
DiT (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers", section 3.2): 2x2 patches
of the 8x8 digits give 16 tokens, and a width-128, 6-block, 4-head model (1.87M parameters, 20M
forward multiply-adds per image against the U-Net's 16M) takes about 1.2x the U-Net's step time on
two CPU cores, so training stays close to the quick start's ten minutes.
"""

from configs import digits


def get_config():
    """Returns the digits config with a small DiT."""
    config = digits.get_config()
    config.model.name = "dit"
    config.model.dit.patch_size = 2
    config.model.dit.hidden_size = 128
    config.model.dit.depth = 6
    config.model.dit.num_heads = 4
    config.model.dit.mlp_ratio = 4.0
    return config
