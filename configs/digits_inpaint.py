"""Inpainting on the digits with a mask-conditioned model (Saharia et al. 2022, Palette, sec. 2).

The masked digit and its mask are concatenated to x_t; training draws random masks (rectangles,
halves, random pixels); evaluation fills in the bottom half of every test digit and reports the
PSNR over the filled pixels and the class accuracy of the results (the true labels). Otherwise
the quick start's model and recipe, unconditional on the class. For RePaint (Lugmayr et al. 2022)
with the quick-start model instead, without retraining:
`python -m diffax.main --config=configs/digits.py --workdir=workdirs/digits --mode=sample
--config.inpainting.repaint=True`.
"""

from configs import digits


def get_config():
    """Returns the digits inpainting config."""
    config = digits.get_config()
    config.inpainting.mask_cond = True
    config.inpainting.train_masks = ("box", "half", "pixels")
    config.inpainting.eval_mask = "bottom_half"
    config.model.class_cond = False  # The known part is the condition.
    config.training.label_dropout = 0.0
    config.eval.guidance_scale = 0.0
    config.eval.num_samples = 360  # The whole test split, inpainted.
    return config
