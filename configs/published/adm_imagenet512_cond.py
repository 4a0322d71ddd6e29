"""ADM-G ImageNet 512x512, OpenAI's published weights: `512x512_diffusion.pt` (guided-diffusion).

Dhariwal & Nichol 2021, Table 4 and the abstract: FID 7.72 with classifier guidance (the README
samples it at scale 4.0, 250 respaced steps; its results table: FID 7.72, precision 0.87, recall
0.42). MODEL_FLAGS: adm_imagenet256_cond's with `--image_size 512 --use_fp16 False`: channel_mult
0.5,1,1,2,2,4,4 (the input conv is 128 wide), 559M parameters. Guidance: the 512x512 classifier
(configs/published/adm_classifier512.py). Weights:
https://openaipublic.blob.core.windows.net/diffusion/jul-2021/512x512_diffusion.pt.
"""

from configs.published import adm_imagenet256_cond

CHECKPOINT = "512x512_diffusion.pt"


def get_config():
    """Returns the config of OpenAI's ADM ImageNet 512x512 for sampling."""
    config = adm_imagenet256_cond.get_config()
    config.data.image_size = 512
    config.model.unet.channel_mult = (0.5, 1, 1, 2, 2, 4, 4)
    config.eval.batch_size = 8
    config.eval.classifier_scale = 4.0
    config.eval.classifier_workdir = "workdirs/adm_classifier512"
    return config
