"""DiT-XL/2 on ImageNet 256x256 latents: Peebles & Xie 2023, sections 3-5.

The headline class-conditional model (FID 2.27 with guidance, Table 2): DiT-XL/2 (Table 1: hidden
1152, depth 28, 16 heads, patch 2) on the 32x32x4 latents of the Stable Diffusion VAE (sec. 3.1,
an 8x downsampling of 256x256 images); T=1000 linear betas; the mean trained by L_simple and the
learned covariance by the full bound, improved DDPM's hybrid loss (sec. 3.1, 4); AdamW at a
constant 1e-4, no weight decay, batch 256, EMA 0.9999, horizontal flips only (sec. 4), 7M steps
(sec. 5.1); label dropout 0.1 for classifier-free guidance, sampled with 250 DDPM steps at
guidance scale 1.5 (sec. 4, 5.1).

Runs on the latents of Stable Diffusion's VAE (diffax.latents, "sd_vae"): give the diffusers
weights file on the command line, `--config.latent.sd_vae_weights=.../diffusion_pytorch_model.
safetensors` (an off-the-shelf SD VAE, sec. 3.1); the 256x256 images are encoded once
into the latent cache. The data fields below are the latents' (32x32x4), as in every latent config.
"""

from configs import default


def get_config():
    """Returns the ImageNet-256 DiT-XL/2 config."""
    config = default.get_config()
    config.latent.autoencoder = "sd_vae"  # latent.sd_vae_weights: set on the command line.
    config.latent.scale = 0.18215  # Stable Diffusion's scaling factor, which DiT uses.
    config.data.dataset = "imagenet2012"
    config.data.image_size = 32  # The VAE's 32x32 latents of 256x256 images.
    config.data.num_channels = 4  # Latent channels.
    config.data.num_classes = 1000
    config.data.eval_split = "validation"
    config.data.random_flip = True  # The paper's only augmentation (sec. 4).
    config.data.shuffle_buffer = 50_000

    config.model.name = "dit"
    config.model.dit.patch_size = 2
    config.model.dit.hidden_size = 1152  # DiT-XL (Table 1).
    config.model.dit.depth = 28
    config.model.dit.num_heads = 16
    config.model.dit.mlp_ratio = 4.0
    config.model.class_cond = True
    config.model.dtype = "bfloat16"  # Params, norms, softmax and the output stay float32.

    config.diffusion.schedule = "linear"
    config.diffusion.num_timesteps = 1000
    config.diffusion.var_type = "learned_range"  # Improved DDPM's interpolated Sigma (sec. 3.1).
    config.diffusion.loss_type = "hybrid"  # L_simple for the mean, L_vlb for Sigma (sec. 3.1).

    config.training.batch_size = 256
    config.training.num_steps = 7_000_000
    config.training.learning_rate = 1e-4
    config.training.warmup_steps = 0
    config.training.weight_decay = 0.0
    config.training.ema_rates = (0.9999,)
    config.training.label_dropout = 0.1
    config.training.sample_every = 50_000
    config.training.checkpoint_every = 50_000

    config.eval.batch_size = 1000
    config.eval.num_samples = 50_000  # FID-50K.
    config.eval.sampler = "ddpm"
    config.eval.sample_steps = 250
    # diffax's w is (1 + w) cond - w uncond; the paper's scale s = 1 + w = 1.5 (sec. 5.1).
    config.eval.guidance_scale = 0.5
    config.eval.clip_denoised = False  # Latents are not confined to [-1, 1].
    return config
