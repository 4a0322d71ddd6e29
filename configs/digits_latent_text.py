"""Text-conditioned latent diffusion on the digits: "a handwritten seven" -> latents -> a 7.

configs/digits_latent.py (the frozen f = 4 autoencoder of configs/digits_autoencoder.py, 8x8x4
latents, linear betas, no clipping) with configs/digits_text.py's text conditioning (LDM's
SpatialTransformer cross-attending to a byte-level encoder trained jointly; Rombach et al. 2022,
sec. 3.3, the text-to-image LDM's recipe on a laptop scale). Each cached latent's caption is its
label by a training template drawn afresh for each batch; eval draws its prompts from the held-out
templates and decodes the samples before the digits classifier reads them.

    python -m diffax.main --config=configs/digits_autoencoder.py --workdir=A
    python -m diffax.main --config=configs/digits_latent_text.py --workdir=LT \\
        --config.latent.autoencoder_workdir=A
    python -m diffax.main --config=configs/digits_latent_text.py --workdir=LT \\
        --config.latent.autoencoder_workdir=A --mode=sample --prompt="a handwritten three"
"""

from configs import digits_latent, digits_text


def get_config():
    """Returns the text-conditioned digits latent config (set latent.autoencoder_workdir)."""
    config = digits_latent.get_config()
    text = digits_text.get_config()
    config.data.text_length = text.data.text_length
    config.model.class_cond = False
    config.model.text_cond = True
    config.model.unet.attention_resolutions = text.model.unet.attention_resolutions
    for field in ("width", "depth", "num_heads"):  # Learned positions, unlike digits_text.
        config.model.text[field] = text.model.text[field]
    config.training.num_steps = text.training.num_steps  # A text step costs about two.
    config.training.label_dropout = text.training.label_dropout  # Captions to the empty one.
    return config
