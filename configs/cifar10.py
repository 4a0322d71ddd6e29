"""DDPM on CIFAR-10: Ho et al. 2020, sec. 4 and appendix B.

T=1000 linear betas 1e-4..0.02, eps prediction with fixed variance beta_t (sigma^2 = beta_t), the
simple loss, a 35.7M-parameter U-Net (ch 128, multipliers 1,2,2,2, two residual blocks, attention
at 16x16, dropout 0.1), Adam at 2e-4 with 5000 warmup steps, batch 128, gradient clip 1.0,
EMA 0.9999, random horizontal flips, 800k steps. The diffusion settings are the default's.
"""

from configs import default


def get_config():
    """Returns the CIFAR-10 DDPM config."""
    config = default.get_config()
    config.data.dataset = "cifar10"
    config.data.image_size = 32
    config.data.num_classes = 10
    config.data.random_flip = True
    config.data.shuffle_buffer = 50_000

    config.model.unet.channel_mult = (1, 2, 2, 2)
    config.model.unet.attention_resolutions = (16,)
    config.model.unet.num_heads = 1
    config.model.unet.dropout = 0.1
    config.model.unet.use_scale_shift_norm = False  # DDPM adds the embedding (ADM added AdaGN).
    config.model.dtype = "bfloat16"

    config.training.num_steps = 800_000
    config.training.learning_rate = 2e-4
    config.training.warmup_steps = 5000
    config.training.grad_clip = 1.0

    config.eval.batch_size = 1000
    return config
