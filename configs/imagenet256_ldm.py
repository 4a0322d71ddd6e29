"""LDM-4, class-conditional ImageNet 256x256: Rombach et al. 2022 (Table 3, appendix Table 15), on
paper (the recipe written down; never run here).

The paper's model: an f = 4 first stage giving 64x64x3 latents, a 400M-parameter U-Net on them
(base width 192, channel multipliers 1, 2, 3, 5, two residual blocks per level, attention at
latent resolutions 32, 16, 8 with 32-channel heads), T = 1000, eps prediction with L_simple and
fixed variances; sampled with 250 DDIM steps, classifier-free guidance scale 1.5 for LDM-4-G
(FID 3.60, Table 3). Differences, stated: the paper's class-conditional first stage is
VQ-regularised and its classes enter by cross-attention; diffax has KL autoencoders
(latent.autoencoder = "workdir": train an f = 4, z = 3 one on ImageNet first, e.g.
configs/digits_autoencoder.py's recipe with block_out_channels (128, 256, 512) and z_channels 3,
without LDM's LPIPS and GAN terms, which diffax does not train) and adds the class embedding to the
time embedding (ADM's way). The beta schedule is DDPM's linear one; LDM's runs linearly in
sqrt(beta) from 0.0015 to 0.0195 (its configs), which diffax does not offer. Batch size, steps
and learning rate: check Table 15 before a run; the values below are placeholders of that size.
"""

from configs import default


def get_config():
    """Returns the ImageNet-256 LDM-4 config (latent.autoencoder_workdir set on the line)."""
    config = default.get_config()
    config.latent.autoencoder = "workdir"  # An ImageNet KL-f4 autoencoder (z = 3).
    config.data.dataset = "imagenet2012"
    config.data.image_size = 64  # 256x256 images / f = 4.
    config.data.num_channels = 3  # The latents' channels (64x64x3, Table 15).
    config.data.num_classes = 1000
    config.data.eval_split = "validation"
    config.data.shuffle_buffer = 50_000

    config.model.name = "unet"
    config.model.unet.ch = 192
    config.model.unet.channel_mult = (1, 2, 3, 5)
    config.model.unet.num_res_blocks = 2
    config.model.unet.attention_resolutions = (32, 16, 8)
    config.model.unet.num_head_channels = 32
    config.model.class_cond = True
    config.model.dtype = "bfloat16"

    config.diffusion.schedule = "linear"
    config.diffusion.num_timesteps = 1000
    config.diffusion.mean_type = "eps"
    config.diffusion.var_type = "fixed_small"
    config.diffusion.loss_type = "mse"

    config.training.batch_size = 1024  # Placeholder: check Table 15.
    config.training.num_steps = 200_000  # Placeholder: check Table 15.
    config.training.learning_rate = 1e-4
    config.training.label_dropout = 0.1  # Classifier-free guidance needs the null class.
    config.training.sample_every = 50_000
    config.training.checkpoint_every = 10_000

    config.eval.batch_size = 512
    config.eval.num_samples = 50_000  # FID-50K.
    config.eval.sampler = "ddim"
    config.eval.sample_steps = 250  # Table 3.
    config.eval.ddim_eta = 0.0
    # diffax's w is (1 + w) cond - w uncond; the paper's scale s = 1 + w = 1.5 (LDM-4-G).
    config.eval.guidance_scale = 0.5
    config.eval.clip_denoised = False  # Latents are not confined to [-1, 1].
    return config
