"""DiT-XL/2 512x512, Meta's published weights: `DiT-XL-2-512x512.pt` (facebookresearch/DiT).

Peebles & Xie 2023, Table 5 (class-conditional ImageNet 512x512): DiT-XL/2-G (cfg = 1.50) reaches
FID-50K 3.04 with 250 DDPM steps (the DiT README lists IS 240.82). The 256x256 model's
architecture on 64x64x4 latents (512x512 images through the same 8x VAE): 1024 tokens of 2x2
patches; sampling as configs/published/dit_xl2_256.py.
"""

from configs.published import dit_xl2_256


def get_config():
    """Returns the config of Meta's DiT-XL/2 512x512 for sampling and evaluation."""
    config = dit_xl2_256.get_config()
    config.data.image_size = 64  # The VAE's 64x64 latents of 512x512 images.
    return config
