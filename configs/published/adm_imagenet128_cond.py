"""ADM-G ImageNet 128x128, OpenAI's published weights: `128x128_diffusion.pt` (guided-diffusion).

Dhariwal & Nichol 2021, Table 4 and the abstract: FID 2.97 with classifier guidance (the
README samples it at scale 0.5, 250 respaced steps; its results table: FID 2.97, precision 0.78,
recall 0.59). MODEL_FLAGS: `--attention_resolutions 32,16,8 --class_cond True --diffusion_steps
1000 --image_size 128 --learn_sigma True --noise_schedule linear --num_channels 256 --num_heads 4
--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True`
(channel_mult 1,1,2,3,4; 4 heads, not 64 channels per head). Guidance: the 128x128 classifier
(configs/published/adm_classifier128.py). Weights:
https://openaipublic.blob.core.windows.net/diffusion/jul-2021/128x128_diffusion.pt.
"""

from configs.published import adm_imagenet256_cond

CHECKPOINT = "128x128_diffusion.pt"


def get_config():
    """Returns the config of OpenAI's ADM ImageNet 128x128 for sampling."""
    config = adm_imagenet256_cond.get_config()
    config.data.image_size = 128
    config.model.unet.channel_mult = (1, 1, 2, 3, 4)
    config.model.unet.num_heads = 4
    config.model.unet.num_head_channels = -1
    config.eval.classifier_scale = 0.5
    config.eval.classifier_workdir = "workdirs/adm_classifier128"
    return config
