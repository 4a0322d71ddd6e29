"""ADM's 64x64 -> 256x256 ImageNet upsampler (Dhariwal & Nichol 2021, sec. 5 and Table 11).

The architecture is that of guided-diffusion's released `64_256_upsampler` (its README's flags):
U-Net with ch 192, multipliers 1,1,2,2,4,4 (the 256x256 default), two residual blocks, attention
at 32, 16 and 8 with 4 heads, BigGAN up/down-sampling, scale-shift norm, class-conditional,
learned variance on T=1000 linear betas, fp16 (bfloat16 here). Training as Table 11's upsampler
column: Adam at 1e-4, batch 256, 500K steps. The low-resolution image is upsampled and
concatenated to x_t (ADM's SuperResModel, after SR3); ADM used no noise conditioning
augmentation, so train_aug_max stays 0 (set it, e.g. 0.2, to follow Cascaded Diffusion Models).
Data: TFDS imagenet2012, center-cropped and resized to 256 by the input pipeline.
"""

from configs import default


def get_config():
    """Returns the ImageNet 64 -> 256 upsampler config."""
    config = default.get_config()
    config.data.dataset = "imagenet2012"
    config.data.image_size = 256
    config.data.num_classes = 1000
    config.data.eval_split = "validation"
    config.data.random_flip = True
    config.data.shuffle_buffer = 50_000

    config.model.unet.ch = 192
    config.model.unet.channel_mult = (1, 1, 2, 2, 4, 4)
    config.model.unet.attention_resolutions = (32, 16, 8)
    config.model.unet.num_heads = 4
    config.model.unet.resblock_updown = True
    config.model.class_cond = True
    config.model.dtype = "bfloat16"

    config.diffusion.var_type = "learned_range"
    config.diffusion.loss_type = "hybrid"

    config.super_resolution.low_res_size = 64
    config.super_resolution.upsample_method = "linear"

    config.training.batch_size = 256
    config.training.num_steps = 500_000
    config.training.ema_rates = (0.9999,)
    config.training.sample_every = 20_000

    config.eval.batch_size = 64
    config.eval.num_bpd_examples = 1000
    config.eval.num_samples = 1000
    config.eval.sampler = "ddim"
    config.eval.sample_steps = 250
    return config
