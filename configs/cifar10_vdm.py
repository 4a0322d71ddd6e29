"""VDM on CIFAR-10 (Kingma et al. 2021, sec. 6 and appendix B), without data augmentation.

Checked against the authors' released config (google-research/vdm, configs/cifar10.py and
model_vdm.py's ScoreUNet): a U-Net without downsampling, 32 residual blocks of 128 channels on the
way in and 33 on the way out, a middle of residual block / attention / residual block and no other
attention, dropout 0.1, Fourier features sin/cos(2^n pi x) for n = 7, 8 (their 2^m 2 pi, m = 6, 7);
gamma ends initialised at -13.3 and 5.0; the continuous-time bound with antithetic times; AdamW
(b1 0.9, b2 0.99, eps 1e-8, weight decay 0.01) at 2e-4 with 100 warm-up steps, no decay, batch
128, EMA 0.9999, 10M steps.

Differences that remain: the released config learns only the schedule's two ends
(`learnable_scalar`); this one uses the paper's monotone network (`learned`), which has the same
bound in expectation (VDM's invariance result) and lower variance. diffax's U-Net adds the time
embedding by scale-shift norm where VDM adds a projection, and VDM adds z to the network's eps
output (a "base measure"); the parameter counts therefore differ slightly.
"""

from configs import cifar10


def get_config():
    """Returns the CIFAR-10 VDM config."""
    config = cifar10.get_config()
    config.data.random_flip = False  # VDM's headline CIFAR-10 result uses no augmentation.

    config.model.unet.ch = 128  # Constant width: one level, no downsampling.
    config.model.unet.channel_mult = (1,)
    config.model.unet.num_res_blocks = 32
    config.model.unet.attention_resolutions = ()  # Only the middle block's attention.
    config.model.unet.dropout = 0.1
    config.model.dtype = "float32"  # As released; bits/dim to 0.01 want full precision.

    config.diffusion.kind = "continuous"
    config.diffusion.gamma_schedule = "learned"
    config.diffusion.gamma_min = -13.3
    config.diffusion.gamma_max = 5.0
    config.diffusion.schedule_hidden = 1024
    config.diffusion.weighting = "elbo"
    config.diffusion.min_snr_gamma = 5.0
    # sin/cos(2^n pi x), n = 7, 8: VDM's Base2FourierFeatures(start=6, stop=8) times 2 pi.
    config.model.unet.fourier_features = (7, 8)
    config.eval.bpd_t_samples = 1
    config.eval.ode_divergence = "hutchinson"  # 3072 dims: the exact divergence is too costly.
    config.diffusion.mean_type = "eps"

    config.training.batch_size = 128
    config.training.learning_rate = 2e-4
    config.training.num_steps = 10_000_000
    config.training.ema_rates = (0.9999,)
    config.training.warmup_steps = 100
    config.training.grad_clip = 0.0  # None in the released code.
    config.training.adam_b2 = 0.99
    config.training.weight_decay = 0.01

    config.eval.sampler = "ancestral"  # VDM samples with ancestral steps on a uniform t grid.
    config.eval.sample_steps = 1000
    return config
