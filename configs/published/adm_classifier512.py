"""ADM's noisy ImageNet classifier at 512x512, OpenAI's `512x512_classifier.pt` (guided-diffusion).

As configs/published/adm_classifier256.py, for 512x512 images: the classifier defaults (depth 2),
channel_mult 0.5, 1, 1, 2, 2, 4, 4, trained on the linear T=1000 process of
configs/published/adm_imagenet512_cond.py, which it guides.
Weights: https://openaipublic.blob.core.windows.net/diffusion/jul-2021/512x512_classifier.pt.
"""

from configs.published import adm_classifier256, adm_imagenet512_cond

CHECKPOINT = "512x512_classifier.pt"


def get_config():
    """Returns the config of OpenAI's 512x512 noisy classifier."""
    config = adm_classifier256.get_config()
    base = adm_imagenet512_cond.get_config()
    config.data.dataset = base.data.dataset
    config.data.image_size = 512
    config.diffusion.schedule = base.diffusion.schedule
    config.model.classifier.channel_mult = (0.5, 1, 1, 2, 2, 4, 4)
    return config
