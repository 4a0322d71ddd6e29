"""The ImageNet 64x64 noisy classifier of classifier guidance: Dhariwal & Nichol 2021 ("Diffusion
Models Beat GANs"), sec. 4.1 and the appendix table of classifier hyperparameters (Table 12 of
arXiv:2105.05233v4).

Sec. 4.1: the downsampling trunk of the U-Net with an attention pool at 8x8, trained on noised
images x_t. Table 12, ImageNet 64 column: width 128, depth 4 (residual blocks per level), channel
multipliers 1,2,3,4, 64 channels per attention head, attention at 32, 16 and 8, BigGAN residual
downsampling; batch size 1024, learning rate 6e-4, weight decay 0.2, 200K iterations. AdaGN
(scale-shift norm) as in the ADM models the trunk comes from.

The process is configs/imagenet64.py's (cosine, T=4000, learned range): a classifier must be
trained on the process of the diffusion model it guides, whose timesteps the guided sampler passes
to it. The paper's classifier instead matched its own ADM ImageNet-64 model (cosine, T=1000).

Not given by the paper, so diffax's defaults or the base config's: the learning-rate schedule
(constant here, no warmup), Adam betas (0.9, 0.999), gradient clipping (none), dropout (0), EMA
(0.9999, the base config's), mixed precision (bfloat16 compute here). The paper's random crops
(sec. 4.1) have no counterpart in the input pipeline; random flips are on.
"""

from configs import imagenet64


def get_config():
    """Returns the ImageNet-64 noisy-classifier config."""
    config = imagenet64.get_config()
    config.model.name = "noisy_classifier"
    config.model.class_cond = False  # The labels are the targets, not a conditioning input.
    config.model.classifier.ch = 128
    config.model.classifier.channel_mult = (
        1,
        2,
        3,
        4,
    )  # 64 -> 32 -> 16 -> 8: the pool sits at 8x8.
    config.model.classifier.num_res_blocks = 4
    config.model.classifier.attention_resolutions = (32, 16, 8)
    config.model.classifier.num_head_channels = 64
    config.model.classifier.resblock_updown = True
    config.model.classifier.use_scale_shift_norm = True
    config.model.classifier.dropout = 0.0

    config.training.batch_size = 1024
    config.training.num_steps = 200_000
    config.training.learning_rate = 6e-4
    config.training.weight_decay = 0.2
    config.training.label_dropout = 0.0
    config.training.sample_every = 0  # A classifier has no samples.
    return config
