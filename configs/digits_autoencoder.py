"""The first stage of a latent diffusion model on the digits: a KL autoencoder, on a laptop CPU.

Rombach et al. 2022 (sec. 3.1, appendix G): an f = 4 KL-regularised autoencoder (kl_weight 1e-6,
L1 reconstruction; the perceptual and adversarial terms: configs/digits_autoencoder_gan.py). The
8x8 digits are upscaled to 32x32 by the input pipeline, so the latents are 8x8x4, the digits' own
size. Widths are cut down so training takes a few minutes on two CPU cores.

`python -m diffax.main --config=configs/digits_autoencoder.py --workdir=...` trains it and reports
the test reconstruction PSNR and the latent scale (also written to WORKDIR/latent_stats.json).
"""

from configs import digits


def get_config():
    """Returns the digits autoencoder config."""
    config = digits.get_config()
    config.data.image_size = 32  # The pipeline resizes the 8x8 digits (bilinear).
    config.data.random_flip = False

    config.model.name = "autoencoder_kl"
    config.model.autoencoder.block_out_channels = (16, 32, 32)  # f = 4: 32x32 -> 8x8x4 latents.
    config.model.autoencoder.layers_per_block = 1
    config.model.autoencoder.norm_num_groups = 16
    config.model.class_cond = False  # The autoencoder ignores labels.
    config.eval.guidance_scale = 0.0

    config.training.batch_size = 32
    config.training.num_steps = 500
    config.training.learning_rate = 1e-3
    config.training.warmup_steps = 50
    config.training.grad_clip = 1.0
    config.training.ema_rates = (0.99,)  # A short run: 0.999 would still weigh the init.
    config.training.label_dropout = 0.0
    config.training.sample_every = 0  # An autoencoder has no samples; reconstructions instead.
    config.training.checkpoint_every = 500
    config.eval.quality_metrics = False
    return config
