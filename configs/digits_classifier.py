"""A noisy classifier for guiding the digits model (configs/digits.py) on a laptop CPU.

Dhariwal & Nichol 2021 (sec. 4.1): the classifier is the U-Net's downsampling half with attention
pooling, with BigGAN residual downsampling and AdaGN, trained with cross entropy on x_t at uniform
t of the same noising process as the diffusion model it guides. The process fields are the digits
model's (cosine, T=500): the guided sampler calls the classifier with that model's timesteps.
Sizes are cut down so training takes about a minute on two CPU cores.
"""

from configs import digits


def get_config():
    """Returns the digits noisy-classifier config."""
    config = digits.get_config()
    config.model.name = "noisy_classifier"
    config.model.class_cond = False  # The labels are the targets, not a conditioning input.
    config.model.classifier.ch = 32
    config.model.classifier.channel_mult = (1, 2)  # 8x8 -> 4x4; the attention pool sits at 4x4.
    config.model.classifier.num_res_blocks = 1
    config.model.classifier.attention_resolutions = (4,)
    config.model.classifier.num_head_channels = 32
    config.model.classifier.resblock_updown = True
    config.model.classifier.use_scale_shift_norm = True
    config.model.classifier.dropout = 0.0

    config.training.batch_size = 128
    config.training.num_steps = 500
    config.training.learning_rate = 1e-3
    config.training.warmup_steps = 50
    config.training.weight_decay = 0.05
    config.training.ema_rates = (0.99,)  # A short run: 0.999 would still weigh the init.
    config.training.label_dropout = 0.0
    config.training.sample_every = 0  # A classifier has no samples.
    config.eval.guidance_scale = 0.0  # Nor classifier-free guidance.
    return config
