"""ADM LSUN cat 256x256, OpenAI's published weights: `lsun_cat.pt` (guided-diffusion).

Dhariwal & Nichol 2021, Table 4: unconditional ADM (dropout) on LSUN cat, FID 5.57 (the README's
results table: precision 0.63, recall 0.52); the architecture and sampling of adm_lsun_bedroom.
Data: TFDS lsun/cat. Weights: https://openaipublic.blob.core.windows.net/diffusion/jul-2021/lsun_cat.pt.
"""

from configs.published import adm_lsun_bedroom

CHECKPOINT = "lsun_cat.pt"


def get_config():
    """Returns the config of OpenAI's ADM LSUN cat for sampling."""
    config = adm_lsun_bedroom.get_config()
    config.data.dataset = "lsun/cat"
    return config
