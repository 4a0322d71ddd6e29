"""ADM LSUN horse 256x256, OpenAI's published weights: `lsun_horse.pt` (guided-diffusion).

Dhariwal & Nichol 2021, Table 4: unconditional ADM (dropout) on LSUN horse, FID 2.57 (the README's
results table: precision 0.71, recall 0.55); the architecture and sampling of adm_lsun_bedroom.
Data: TFDS lsun/horse. Weights: https://openaipublic.blob.core.windows.net/diffusion/jul-2021/lsun_horse.pt.
"""

from configs.published import adm_lsun_bedroom

CHECKPOINT = "lsun_horse.pt"


def get_config():
    """Returns the config of OpenAI's ADM LSUN horse for sampling."""
    config = adm_lsun_bedroom.get_config()
    config.data.dataset = "lsun/horse"
    return config
