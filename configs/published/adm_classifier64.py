"""ADM's noisy ImageNet classifier at 64x64, OpenAI's `64x64_classifier.pt` (guided-diffusion).

As configs/published/adm_classifier256.py, for 64x64 images: the 64x64 flags with
`--classifier_depth 4` (README), channel_mult 1, 2, 3, 4, trained on the cosine T=1000 process of
the 64x64 model of configs/published/adm_imagenet64_cond.py, which it guides.
Weights: https://openaipublic.blob.core.windows.net/diffusion/jul-2021/64x64_classifier.pt.
"""

from configs.published import adm_classifier256, adm_imagenet64_cond

CHECKPOINT = "64x64_classifier.pt"


def get_config():
    """Returns the config of OpenAI's 64x64 noisy classifier."""
    config = adm_classifier256.get_config()
    base = adm_imagenet64_cond.get_config()
    config.data.dataset = base.data.dataset
    config.data.image_size = 64
    config.diffusion.schedule = base.diffusion.schedule
    config.model.classifier.channel_mult = (1, 2, 3, 4)
    config.model.classifier.num_res_blocks = 4  # The README's --classifier_depth 4.
    return config
