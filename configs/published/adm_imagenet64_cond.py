"""ADM ImageNet 64x64, OpenAI's published weights: `64x64_diffusion.pt` (guided-diffusion).

The guided-diffusion README's results table lists FID 2.07 (precision 0.74, recall 0.63) for
ImageNet 64x64, and samples this model with the 64x64 classifier at scale 1.0 and 250 respaced
steps, the setting kept here; Dhariwal & Nichol 2021's Table 4 gives 2.07 to ADM (dropout) at
64x64 (unguided, as we read it: check before quoting). MODEL_FLAGS: `--attention_resolutions
32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 --image_size 64 --learn_sigma
True --noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3
--resblock_updown True --use_new_attention_order True --use_fp16 True --use_scale_shift_norm
True` (channel_mult 1,2,3,4; the only published ADM with the new attention order). Guidance: the
64x64 classifier (configs/published/adm_classifier64.py). Weights:
https://openaipublic.blob.core.windows.net/diffusion/jul-2021/64x64_diffusion.pt.
"""

from configs.published import adm_imagenet256_cond

CHECKPOINT = "64x64_diffusion.pt"


def get_config():
    """Returns the config of OpenAI's ADM ImageNet 64x64 for sampling."""
    config = adm_imagenet256_cond.get_config()
    config.data.dataset = "imagenet_resized/64x64"
    config.data.image_size = 64
    unet = config.model.unet
    unet.ch = 192
    unet.channel_mult = (1, 2, 3, 4)
    unet.num_res_blocks = 3
    unet.dropout = 0.1
    unet.use_new_attention_order = True
    config.diffusion.schedule = "cosine"
    config.eval.batch_size = 64
    config.eval.classifier_workdir = "workdirs/adm_classifier64"
    return config
