"""Improved DDPM class-conditional ImageNet 64x64, OpenAI's `imagenet64_cond_270M_250K.pt`
(improved-diffusion).

Nichol & Dhariwal 2021, sec. 5 (the 270M-parameter class-conditional model trained 250K steps;
its README: `--image_size 64 --num_channels 192 --num_res_blocks 3 --learn_sigma True
--class_cond True`, `--diffusion_steps 4000 --noise_schedule cosine --rescale_learned_sigmas
False --rescale_timesteps False`): width 192, a label table without a null class, and the
network reads t itself (timestep_scale 1). Dhariwal & Nichol 2021's Table 4 quotes it as IDDPM,
FID 2.92 on ImageNet 64x64 (as we read it: check before quoting). Weights:
https://openaipublic.blob.core.windows.net/diffusion/march-2021/imagenet64_cond_270M_250K.pt.
"""

from configs.published import iddpm_imagenet64_uncond

CHECKPOINT = "imagenet64_cond_270M_250K.pt"


def get_config():
    """Returns the config of improved-diffusion's class-conditional ImageNet-64 model."""
    config = iddpm_imagenet64_uncond.get_config()
    config.model.class_cond = True
    config.model.unet.ch = 192
    config.model.unet.null_class = False
    config.model.unet.timestep_scale = 1.0
    return config
