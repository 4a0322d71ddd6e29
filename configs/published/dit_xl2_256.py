"""DiT-XL/2 256x256, Meta's published weights: `DiT-XL-2-256x256.pt` (facebookresearch/DiT).

Peebles & Xie 2023, Table 4 (class-conditional ImageNet 256x256): DiT-XL/2-G (cfg = 1.50) reaches
FID-50K 2.27 with 250 DDPM steps (the DiT README lists IS 278.24; re-evaluated in float32 from
the ported PyTorch weights, 2.21). The architecture and process are configs/imagenet256_dit_xl2.py
(Table 1: 675M parameters); sampling follows DiT's `sample_ddp.py`: 250 respaced DDPM steps,
guidance scale s = 1.5 (diffax's w = s - 1 = 0.5) applied by `forward_with_cfg` to the first 3
of the 4 latent channels (`eval.guidance_channels`), the `sd-vae-ft-ema` decoder and latents
divided by 0.18215. Weights: https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt and
the diffusers weights of stabilityai/sd-vae-ft-ema; how to import: docs/published_models.md.
"""

from configs import imagenet256_dit_xl2


def get_config():
    """Returns the config of Meta's DiT-XL/2 256x256 for sampling and evaluation."""
    config = imagenet256_dit_xl2.get_config()
    config.eval.guidance_channels = 3  # DiT's forward_with_cfg guides eps[:, :3] only.
    config.eval.use_ema = True  # The published file holds the EMA weights.
    return config
