"""A seconds-long smoke config: the digits setup shrunk for tests and quick checks of an install."""

from configs import digits


def get_config():
    """Returns the tiny digits config."""
    config = digits.get_config()
    config.model.unet.ch = 32  # GroupNorm takes 32 groups: channels must be multiples of 32.
    config.model.unet.channel_mult = (1, 1)
    config.model.unet.num_res_blocks = 1
    config.model.unet.attention_resolutions = (4,)
    config.model.unet.num_head_channels = 32
    config.model.unet.dropout = 0.0
    config.diffusion.num_timesteps = 20
    config.training.batch_size = 16
    config.training.num_steps = 4
    config.training.warmup_steps = 2
    config.training.log_every = 2
    config.training.sample_every = 0
    config.training.checkpoint_every = 2
    config.eval.batch_size = 32
    config.eval.num_bpd_examples = 32
    config.eval.num_samples = 16
    config.eval.sample_steps = 10
    return config
