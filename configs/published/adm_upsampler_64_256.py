"""ADM-U 64x64 -> 256x256, OpenAI's published upsampler: `64_256_upsampler.pt` (guided-diffusion).

Dhariwal & Nichol 2021, sec. 5 and the abstract: the upsampler under a guided 64x64 base model
improves ImageNet 256x256 FID to 3.94 (the README's second results table: precision 0.83, recall
0.53). MODEL_FLAGS: `--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000
--large_size 256 --small_size 64 --learn_sigma True --noise_schedule linear --num_channels 192
--num_heads 4 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm
True`; its SuperResModel concatenates the bilinearly upsampled 64x64 image to x_t and embeds no
augmentation level (super_resolution.level_cond=False). The README samples it with 250 respaced
steps. --mode=sample upsamples the samples of the base model in super_resolution.base_workdir
(configs/published/adm_imagenet64_cond.py imported there: the cascade), so it needs no data.
Weights: https://openaipublic.blob.core.windows.net/diffusion/jul-2021/64_256_upsampler.pt.
"""

from configs.published import adm_imagenet256_cond

CHECKPOINT = "64_256_upsampler.pt"


def get_config():
    """Returns the config of OpenAI's 64 -> 256 upsampler for sampling."""
    config = adm_imagenet256_cond.get_config()
    unet = config.model.unet
    unet.ch = 192
    unet.num_heads = 4
    unet.num_head_channels = -1
    config.super_resolution.low_res_size = 64
    config.super_resolution.upsample_method = "linear"  # torch's bilinear interpolate.
    config.super_resolution.level_cond = False
    config.super_resolution.base_workdir = "workdirs/adm_imagenet64_cond"
    config.eval.classifier_scale = 0.0  # The upsampler is not guided.
    return config
