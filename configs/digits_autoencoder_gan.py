"""The digits autoencoder trained against a PatchGAN discriminator, as LDM's first stages are.

Rombach et al. 2022 (appendix G) train their KL autoencoders with the loss of taming-transformers'
VQGAN (Esser et al. 2021), LDM's `LPIPSWithDiscriminator`: L1 + LPIPS + kl_weight KL, plus a
hinge-loss PatchGAN whose generator term is weighted by disc_weight = 0.5 times the adaptive weight
||grad rec|| / ||grad adv|| at the decoder's last layer, on after disc_start steps. Here the
discriminator starts halfway through the digits run and is cut down to the 32x32 images (two
stride-2 convs: 6x6 patches of 14 pixels; LDM's three on 256x256 images give 30x30). The LPIPS term
needs a local weights file: add --config.training.perceptual_weight=1.0
--config.training.lpips_weights=lpips_vgg16.safetensors (diffax.tools.convert_lpips).

`python -m diffax.main --config=configs/digits_autoencoder_gan.py --workdir=...`
"""

from configs import digits_autoencoder


def get_config():
    """Returns the digits autoencoder GAN config."""
    config = digits_autoencoder.get_config()
    config.training.disc_weight = 0.5  # LDM / taming-transformers' disc_weight.
    config.training.disc_start = 250  # LDM: 50001 of ~ 10^5-10^6 steps; here half the run.
    config.model.discriminator.ndf = 16  # LDM: 64; the digits autoencoder is cut down alike.
    config.model.discriminator.num_layers = (
        2  # 32x32 images: 6x6 patches (LDM: 3 layers on 256x256).
    )
    return config
