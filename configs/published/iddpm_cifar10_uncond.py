"""Improved DDPM on CIFAR-10, OpenAI's published `cifar10_uncond_50M_500K.pt` (improved-diffusion).

Nichol & Dhariwal 2021 (improved DDPM): the unconditional CIFAR-10 model trained with L_hybrid
on the cosine schedule with T = 4000 (its README's flags: `--image_size 32 --num_channels 128
--num_res_blocks 3 --learn_sigma True --dropout 0.3`, `--diffusion_steps 4000 --noise_schedule
cosine`); improved-diffusion's defaults give channel_mult 1,2,2,2, attention at 16 and 8 with
4 heads, scale-shift norm, and `rescale_timesteps=True`: the network reads t * 1000 / 4000
(unet.timestep_scale = 0.25). The L_vlb file `cifar10_uncond_vlb_50M_500K.pt` has the same
architecture and imports with this config. The paper's FID and NLL for it were not checked here
(no copy of its tables offline); sampling keeps 4000 steps, respaced by eval.sample_steps.
Weights: https://openaipublic.blob.core.windows.net/diffusion/march-2021/cifar10_uncond_50M_500K.pt.
"""

from configs import default

CHECKPOINT = "cifar10_uncond_50M_500K.pt"


def get_config():
    """Returns the config of improved-diffusion's CIFAR-10 model for sampling."""
    config = default.get_config()
    config.data.dataset = "cifar10"
    config.data.image_size = 32
    config.data.num_classes = 10  # The data's labels; the model is not conditioned on them.

    unet = config.model.unet
    unet.ch = 128
    unet.channel_mult = (1, 2, 2, 2)
    unet.num_res_blocks = 3
    unet.attention_resolutions = (16, 8)
    unet.num_heads = 4
    unet.num_head_channels = -1
    unet.dropout = 0.3
    unet.use_scale_shift_norm = True
    unet.use_new_attention_order = False  # improved-diffusion has only the legacy order.
    unet.timestep_scale = 1000 / 4000  # rescale_timesteps=True (its default).

    config.diffusion.schedule = "cosine"
    config.diffusion.num_timesteps = 4000
    config.diffusion.var_type = "learned_range"
    config.diffusion.loss_type = "hybrid"

    config.eval.evaluators = ("samples",)
    config.eval.batch_size = 256
    config.eval.num_samples = 50_000
    config.eval.sampler = "ddpm"
    config.eval.sample_steps = 0
    return config
