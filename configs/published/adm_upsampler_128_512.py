"""ADM-U 128x128 -> 512x512, OpenAI's published upsampler: `128_512_upsampler.pt`
(guided-diffusion).

Dhariwal & Nichol 2021, sec. 5 and the abstract: under the guided 128x128 base model it reaches
ImageNet 512x512 FID 3.85 (the README's second results table: precision 0.84, recall 0.53).
MODEL_FLAGS: `--attention_resolutions 32,16 --class_cond True --diffusion_steps 1000
--large_size 512 --small_size 128 --learn_sigma True --noise_schedule linear --num_channels 192
--num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True
--use_scale_shift_norm True` (channel_mult 1,1,2,2,4,4: the upsampler's 512 default). The
cascade's base: configs/published/adm_imagenet128_cond.py in super_resolution.base_workdir.
Weights: https://openaipublic.blob.core.windows.net/diffusion/jul-2021/128_512_upsampler.pt.
"""

from configs.published import adm_upsampler_64_256

CHECKPOINT = "128_512_upsampler.pt"


def get_config():
    """Returns the config of OpenAI's 128 -> 512 upsampler for sampling."""
    config = adm_upsampler_64_256.get_config()
    config.data.image_size = 512
    unet = config.model.unet
    unet.attention_resolutions = (32, 16)
    unet.num_head_channels = 64
    config.super_resolution.low_res_size = 128
    config.super_resolution.base_workdir = "workdirs/adm_imagenet128_cond"
    config.eval.batch_size = 8
    return config
