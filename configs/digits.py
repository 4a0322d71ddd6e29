"""The quick-start run: a class-conditional improved-DDPM model on the 8x8 digits, on a laptop CPU.

Follows Nichol & Dhariwal 2021 (improved DDPM): cosine schedule (sec. 3.2), learned variance range
with the hybrid loss (sec. 3.1), and classifier-free guidance by label dropout (Ho & Salimans 2022,
sec. 3). Sizes are cut down so training finishes in about ten minutes on two CPU cores.
"""

from configs import default


def get_config():
    """Returns the digits config."""
    config = default.get_config()
    config.data.dataset = "digits"
    config.data.image_size = 8
    config.data.num_channels = 1
    config.data.num_levels = 17  # The digits' pixel values are 0..16.
    config.data.num_classes = 10

    config.model.unet.ch = 32
    config.model.unet.channel_mult = (1, 2)
    config.model.unet.num_res_blocks = 1
    config.model.unet.attention_resolutions = (4,)
    config.model.unet.num_head_channels = 32
    config.model.unet.dropout = 0.1
    config.model.class_cond = True

    config.diffusion.schedule = "cosine"
    config.diffusion.num_timesteps = 500  # The full-chain bound on CPU costs T forward passes.
    config.diffusion.var_type = "learned_range"
    config.diffusion.loss_type = "hybrid"

    config.training.num_steps = 2000
    config.training.learning_rate = 1e-3
    config.training.warmup_steps = 200
    config.training.grad_clip = 1.0
    config.training.ema_rates = (0.999,)
    config.training.ema_warmup = True  # 0.999 alone keeps 13.5% of the init after 2000 steps.
    config.training.label_dropout = 0.1
    config.training.sample_every = 1000
    config.training.checkpoint_every = 500

    config.eval.batch_size = 360  # The whole digits test split in one batch.
    config.eval.num_samples = 400  # Enough for a stable Fréchet distance; the grid shows 100.
    config.eval.sample_steps = 100  # Learned variances sample well respaced (N&D 2021, sec. 4).
    config.eval.guidance_scale = 1.0
    return config
