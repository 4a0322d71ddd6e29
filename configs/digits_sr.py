"""Super-resolution on the digits, 4x4 -> 8x8: the mechanics of SR3 / ADM's upsampler on a CPU.

SR3 (Saharia et al. 2021, sec. 2.2): the low-resolution image, upsampled to the output size, is
concatenated to x_t; noise conditioning augmentation (Ho et al. 2022, Cascaded Diffusion Models,
sec. 3.2) corrupts it by a random level s <= train_aug_max that the model also sees, so a cascade
can upsample a base model's samples (`--mode=sample
--config.super_resolution.base_workdir=BASE`). Otherwise the quick start's model and recipe,
unconditional on the class. Eval reports the bound of the image given its low-resolution copy,
and PSNR/SSIM of upsampled test digits next to bicubic upsampling.
"""

from configs import digits


def get_config():
    """Returns the digits super-resolution config."""
    config = digits.get_config()
    config.super_resolution.low_res_size = 4
    config.super_resolution.upsample_method = "linear"
    config.super_resolution.train_aug_max = 0.3
    config.super_resolution.sample_aug_level = 0.0  # Real low-resolution inputs need none.
    config.model.class_cond = False  # The low-resolution digit is the condition.
    config.training.label_dropout = 0.0
    config.eval.guidance_scale = 0.0
    config.eval.num_samples = 360  # The whole test split, upsampled.
    return config
