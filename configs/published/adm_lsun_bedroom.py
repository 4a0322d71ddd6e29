"""ADM LSUN bedroom 256x256, OpenAI's published weights: `lsun_bedroom.pt` (guided-diffusion).

Dhariwal & Nichol 2021, Table 4: unconditional ADM (dropout) on LSUN bedroom, FID 1.90 (the
README's results table: precision 0.66, recall 0.51), sampled with 1000 steps (the README: "the
best samples result from using 1000 timesteps"). MODEL_FLAGS: adm_imagenet256_cond's with
`--class_cond False --dropout 0.1`; no guidance. Data: TFDS lsun/bedroom. Weights:
https://openaipublic.blob.core.windows.net/diffusion/jul-2021/lsun_bedroom.pt. The cat and horse
models are configs/published/adm_lsun_cat.py, adm_lsun_horse.py, adm_lsun_horse_nodropout.py.
"""

from configs.published import adm_imagenet256_cond

CHECKPOINT = "lsun_bedroom.pt"


def get_config():
    """Returns the config of OpenAI's ADM LSUN bedroom for sampling."""
    config = adm_imagenet256_cond.get_config()
    config.data.dataset = "lsun/bedroom"
    config.data.num_classes = 0
    config.model.class_cond = False
    config.model.unet.dropout = 0.1
    config.eval.sample_steps = 0  # Every one of the 1000 steps.
    config.eval.classifier_scale = 0.0
    return config
