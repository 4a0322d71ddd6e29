"""Improved DDPM on ImageNet 64x64: Nichol & Dhariwal 2021, sec. 3-4 and appendix A.

Cosine schedule with T=4000 (sec. 3.2), learned variance range (eq. 15) with the hybrid loss
L_simple + 0.001 L_vlb (sec. 3.1), U-Net with ch 128, multipliers 1,2,3,4, three residual blocks,
attention at 16x16 and 8x8 with 4 heads, scale-shift norm, no dropout; Adam at 1e-4, batch 128,
EMA 0.9999 (the improved-diffusion README's ImageNet-64 flags). Data: TFDS imagenet_resized/64x64.
The U-Net and optimizer are otherwise the default's.
"""

from configs import default


def get_config():
    """Returns the ImageNet-64 improved-DDPM config."""
    config = default.get_config()
    config.data.dataset = "imagenet_resized/64x64"
    config.data.num_classes = 1000
    config.data.eval_split = "validation"
    config.data.random_flip = True
    config.data.shuffle_buffer = 50_000

    config.model.unet.num_res_blocks = 3
    config.model.dtype = "bfloat16"

    config.diffusion.schedule = "cosine"
    config.diffusion.num_timesteps = 4000
    config.diffusion.var_type = "learned_range"
    config.diffusion.loss_type = "hybrid"

    config.training.num_steps = 1_500_000
    config.training.sample_every = 20_000

    config.eval.batch_size = 1000
    config.eval.num_bpd_examples = 10_000
    config.eval.sampler = "ddim"
    config.eval.sample_steps = 250
    return config
