"""ADM ImageNet 256x256 without labels, OpenAI's `256x256_diffusion_uncond.pt` (guided-diffusion).

Dhariwal & Nichol 2021, sec. 4.3: the unconditional model guided by the 256x256 classifier; the
guided-diffusion README samples it with classifier scale 10.0 and 250 respaced steps, the
setting this config keeps (the paper's figure for it was not checked here: no copy of the
paper's tables offline). Its MODEL_FLAGS are adm_imagenet256_cond's with `--class_cond False`.
Weights: https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt.
"""

from configs.published import adm_imagenet256_cond

CHECKPOINT = "256x256_diffusion_uncond.pt"


def get_config():
    """Returns the config of OpenAI's unconditional ADM ImageNet 256x256 for sampling."""
    config = adm_imagenet256_cond.get_config()
    config.model.class_cond = False
    config.eval.classifier_scale = 10.0
    return config
