"""Latent diffusion on the digits, on a laptop CPU: the quick-start model on autoencoder latents.

Rombach et al. 2022 (sec. 3): a frozen f = 4 KL autoencoder (configs/digits_autoencoder.py: the
digits upscaled to 32x32, 8x8x4 latents) and a diffusion model on its latents, scaled to unit
variance by 1 / std of the posterior means (LDM's rescaling of KL latents; read from the
autoencoder's latent_stats.json). The denoiser and its training are configs/digits.py's
(improved DDPM: learned variance range with the hybrid loss, label dropout for classifier-free
guidance), so the two runs compare pixel and latent space at the same cost per step, but for two
fields. The schedule: DDPM's linear betas, as LDM; latents are not clipped to [-1, 1] while
sampling, and without that clipping the cosine schedule's last betas (clipped at 0.999) blow eps
errors up: a first run's latent samples had std 700-5000 against the data's ~1. The EMA rate:
0.995, not 0.999, whose average after 2000 steps still weighs the initial parameters by
0.999^2000 = 13% (chosen before `training.ema_warmup`, which digits.py now turns on and this
config inherits); without the clipping that hides this in pixel space, such EMA samples were
noise where the raw parameters' were clean digits. Samples are
decoded to 32x32 images; the digits metrics see them area-averaged to 8x8.

    python -m diffax.main --config=configs/digits_autoencoder.py --workdir=A
    python -m diffax.main --config=configs/digits_latent.py --workdir=L \\
        --config.latent.autoencoder_workdir=A
"""

from configs import digits


def get_config():
    """Returns the digits latent-diffusion config (set latent.autoencoder_workdir on the line)."""
    config = digits.get_config()
    config.latent.autoencoder = "workdir"  # latent.autoencoder_workdir: a digits_autoencoder run.
    config.data.image_size = 8  # The latents: 32x32 images / f = 4.
    config.data.num_channels = 4  # The autoencoder's z_channels.
    config.data.random_flip = False  # Digits are not mirror-symmetric.
    config.diffusion.schedule = "linear"  # Not cosine: see above.
    config.training.ema_rates = (0.995,)  # Not 0.999: see above.
    config.eval.clip_denoised = False  # Latents are not confined to [-1, 1].
    return config
