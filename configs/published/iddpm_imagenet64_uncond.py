"""Improved DDPM on ImageNet 64x64, OpenAI's `imagenet64_uncond_100M_1500K.pt` (improved-diffusion).

Nichol & Dhariwal 2021: the unconditional ImageNet-64 model trained with L_hybrid on the cosine
schedule with T = 4000 (its README: `--image_size 64 --num_channels 128 --num_res_blocks 3
--learn_sigma True`, `--diffusion_steps 4000 --noise_schedule cosine`): channel_mult 1,2,3,4,
attention at 16 and 8 with 4 heads, and rescale_timesteps (t * 1000 / 4000). The L_vlb file
`imagenet64_uncond_vlb_100M_1500K.pt` imports with this config too. Data: TFDS
imagenet_resized/64x64 (the downsampled ImageNet of van den Oord et al. 2016). Weights:
https://openaipublic.blob.core.windows.net/diffusion/march-2021/imagenet64_uncond_100M_1500K.pt.
"""

from configs.published import iddpm_cifar10_uncond

CHECKPOINT = "imagenet64_uncond_100M_1500K.pt"


def get_config():
    """Returns the config of improved-diffusion's unconditional ImageNet-64 model."""
    config = iddpm_cifar10_uncond.get_config()
    config.data.dataset = "imagenet_resized/64x64"
    config.data.image_size = 64
    config.data.num_classes = 1000
    config.data.eval_split = "validation"
    config.model.unet.channel_mult = (1, 2, 3, 4)
    config.model.unet.dropout = 0.0
    config.eval.batch_size = 64
    return config
