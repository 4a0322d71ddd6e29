"""configs/digits_text.py with configs/digits_dit.py's Diffusion Transformer as the backbone.

Each DiT block cross-attends to the caption after its self-attention (PixArt-alpha, Chen et al.
2023, sec. 2.3), and the caption's pooled mean joins the timestep in adaLN-Zero's conditioning c
where a class-conditional DiT adds its label (Peebles & Xie 2023, sec. 3.2; the pooled text
embedding is Imagen's, Saharia et al. 2022, sec. 2.4).
"""

from configs import digits_dit, digits_text


def get_config():
    """Returns the text-conditioned digits config on the small DiT."""
    config = digits_text.get_config()
    dit = digits_dit.get_config().model
    config.model.name = dit.name
    config.model.dit = dit.dit
    return config
