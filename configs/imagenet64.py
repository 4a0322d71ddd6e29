"""Improved DDPM on ImageNet 64x64: Nichol & Dhariwal 2021, sec. 3-4 and appendix A.

Cosine schedule with T=4000 (sec. 3.2), learned variance range (eq. 15) with the hybrid loss
L_simple + 0.001 L_vlb (sec. 3.1), U-Net with ch 128, multipliers 1,2,3,4, three residual blocks,
attention at 16x16 and 8x8 with 4 heads, scale-shift norm, no dropout; Adam at 1e-4, batch 128,
EMA 0.9999 (the improved-diffusion README's ImageNet-64 flags). Data: TFDS imagenet_resized/64x64.
"""

from configs import default


def get_config():
    """Returns the ImageNet-64 improved-DDPM config."""
    config = default.get_config()
    config.data.dataset = "imagenet_resized/64x64"
    config.data.image_size = 64
    config.data.num_channels = 3
    config.data.num_levels = 256
    config.data.num_classes = 1000
    config.data.eval_split = "validation"
    config.data.random_flip = True
    config.data.shuffle_buffer = 50_000

    config.model.ch = 128
    config.model.channel_mult = (1, 2, 3, 4)
    config.model.num_res_blocks = 3
    config.model.attention_resolutions = (16, 8)
    config.model.num_heads = 4
    config.model.num_head_channels = -1
    config.model.dropout = 0.0
    config.model.use_scale_shift_norm = True
    config.model.class_cond = False
    config.model.dtype = "bfloat16"

    config.diffusion.schedule = "cosine"
    config.diffusion.num_timesteps = 4000
    config.diffusion.mean_type = "eps"
    config.diffusion.var_type = "learned_range"
    config.diffusion.loss_type = "hybrid"

    config.training.batch_size = 128
    config.training.num_steps = 1_500_000
    config.training.learning_rate = 1e-4
    config.training.warmup_steps = 0
    config.training.grad_clip = 0.0
    config.training.ema_rates = (0.9999,)
    config.training.label_dropout = 0.0
    config.training.log_every = 100
    config.training.sample_every = 20_000
    config.training.checkpoint_every = 5000

    config.eval.batch_size = 1000
    config.eval.num_bpd_examples = 10_000
    config.eval.num_samples = 1000
    config.eval.sampler = "ddim"
    config.eval.sample_steps = 250
    config.eval.guidance_scale = 0.0
    return config
