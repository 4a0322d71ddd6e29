"""ADM's noisy ImageNet classifier at 128x128, OpenAI's `128x128_classifier.pt` (guided-diffusion).

As configs/published/adm_classifier256.py, for 128x128 images: the README's 128x128
CLASSIFIER_FLAGS (depth 2), channel_mult 1, 1, 2, 3, 4, trained on the linear T=1000 process of
configs/published/adm_imagenet128_cond.py, which it guides.
Weights: https://openaipublic.blob.core.windows.net/diffusion/jul-2021/128x128_classifier.pt.
"""

from configs.published import adm_classifier256, adm_imagenet128_cond

CHECKPOINT = "128x128_classifier.pt"


def get_config():
    """Returns the config of OpenAI's 128x128 noisy classifier."""
    config = adm_classifier256.get_config()
    base = adm_imagenet128_cond.get_config()
    config.data.dataset = base.data.dataset
    config.data.image_size = 128
    config.diffusion.schedule = base.diffusion.schedule
    config.model.classifier.channel_mult = (1, 1, 2, 3, 4)
    return config
