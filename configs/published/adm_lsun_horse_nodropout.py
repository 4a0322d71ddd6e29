"""ADM LSUN horse trained without dropout, OpenAI's `lsun_horse_nodropout.pt` (guided-diffusion).

The README's flags of adm_lsun_horse with `--dropout 0.0` (no figure of its own in the paper's
tables, as we read them). Weights:
https://openaipublic.blob.core.windows.net/diffusion/jul-2021/lsun_horse_nodropout.pt.
"""

from configs.published import adm_lsun_horse

CHECKPOINT = "lsun_horse_nodropout.pt"


def get_config():
    """Returns the config of OpenAI's ADM LSUN horse (no dropout) for sampling."""
    config = adm_lsun_horse.get_config()
    config.model.unet.dropout = 0.0
    return config
