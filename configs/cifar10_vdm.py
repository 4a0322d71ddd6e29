"""VDM on CIFAR-10 (Kingma et al. 2021, sec. 6 and appendix B), without data augmentation.

The architecture is a U-Net without downsampling: 32 residual blocks at 32x32 on the way in and
the way out, 128 channels throughout, a middle of residual block / attention / residual block,
dropout 0.1, Fourier features of the input (sec. 3.4); the noise schedule is learned (ends
initialised at -13.3 and 5.0) and the loss is the continuous-time bound. Adam at 2e-4, batch 128,
EMA 0.9999, 10M steps. These values follow the brief that commissioned this config and the
author's reading of the paper; they could not be checked against the paper's text here: verify
them against its appendix before quoting a reproduction. Fields the paper does not settle are
marked "not given".

Differences from VDM's network that diffax's U-Net imposes: its up path has num_res_blocks + 1
blocks (ADM style), so 33 rather than 32, and it adds the time embedding by scale-shift norm.
"""

from configs import cifar10


def get_config():
    """Returns the CIFAR-10 VDM config."""
    config = cifar10.get_config()
    config.data.random_flip = False  # VDM's headline CIFAR-10 result uses no augmentation.

    config.model.ch = 128  # Constant width: one level, no downsampling.
    config.model.channel_mult = (1,)
    config.model.num_res_blocks = 32
    config.model.attention_resolutions = ()  # Only the middle block's attention.
    config.model.dropout = 0.1
    config.model.dtype = "float32"  # Not given; bits/dim to 0.01 want full precision.

    config.diffusion.kind = "continuous"
    config.diffusion.gamma_schedule = "learned"
    config.diffusion.gamma_min = -13.3
    config.diffusion.gamma_max = 5.0
    config.diffusion.schedule_hidden = 1024
    config.diffusion.weighting = "elbo"
    config.diffusion.min_snr_gamma = 5.0
    # sin/cos(2^n pi x): periods of two and one bins of width 2/255 (exact range: verify).
    config.model.fourier_features = (7, 8)
    config.eval.bpd_t_samples = 1
    config.eval.ode_divergence = "hutchinson"  # 3072 dims: the exact divergence is too costly.
    config.diffusion.mean_type = "eps"

    config.training.batch_size = 128
    config.training.learning_rate = 2e-4
    config.training.num_steps = 10_000_000
    config.training.ema_rates = (0.9999,)
    config.training.warmup_steps = 0  # Not given.
    config.training.grad_clip = 0.0  # Not given.
    config.training.weight_decay = 0.0  # Not given.

    config.eval.sampler = "ancestral"  # VDM samples with ancestral steps on a uniform t grid.
    config.eval.sample_steps = 1000
    return config
