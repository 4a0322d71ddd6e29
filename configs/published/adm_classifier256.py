"""ADM's noisy ImageNet classifier at 256x256, OpenAI's `256x256_classifier.pt` (guided-diffusion).

Dhariwal & Nichol 2021, sec. 4.1: the U-Net's downsampling trunk with an attention pool at 8x8,
trained on noised images of the linear T=1000 process of the 256x256 diffusion models, whose
guidance it gives (eval.classifier_workdir of adm_imagenet256_cond / uncond). guided-diffusion's
classifier defaults (script_util.classifier_defaults, the README's CLASSIFIER_FLAGS):
`--classifier_width 128 --classifier_depth 2 --classifier_attention_resolutions 32,16,8
--classifier_pool attention --classifier_resblock_updown True
--classifier_use_scale_shift_norm True`, 64 channels per head (create_classifier), the legacy
attention order in its blocks (the pool splits q, k, v first), channel_mult 1,1,2,2,4,4.
Weights: https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_classifier.pt.
"""

from configs.published import adm_imagenet256_cond

CHECKPOINT = "256x256_classifier.pt"


def get_config():
    """Returns the config of OpenAI's 256x256 noisy classifier (import it, then guide with it)."""
    config = adm_imagenet256_cond.get_config()
    config.model.name = "noisy_classifier"
    config.model.class_cond = False  # The labels are the targets.
    classifier = config.model.classifier
    classifier.ch = 128
    classifier.channel_mult = config.model.unet.channel_mult
    classifier.num_res_blocks = 2
    classifier.attention_resolutions = (32, 16, 8)
    classifier.num_head_channels = 64
    classifier.resblock_updown = True
    classifier.use_scale_shift_norm = True
    classifier.use_new_attention_order = False
    config.diffusion.var_type = "fixed_large"  # A classifier predicts no variance.
    config.diffusion.loss_type = "mse"
    config.eval.evaluators = ()
    config.eval.classifier_scale = 0.0
    config.training.sample_every = 0
    return config
