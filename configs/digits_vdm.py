"""A continuous-time VDM on the 8x8 digits: learned noise schedule, trained on the bound itself.

Kingma et al. 2021 (Variational Diffusion Models): the continuous-time bound (VDM eq. 17) as the
loss ("elbo" weighting), VDM's learned monotone schedule with its ends initialised at -13.3 and 5.0,
trained for low variance, and Fourier features of the noisy input (VDM sec. 3.4). The model is
unconditional, as VDM's: the figure of merit is bits/dim. Sizes and the optimizer are digits.py's.

"""

from configs import digits


def get_config():
    """Returns the digits VDM config."""
    config = digits.get_config()
    config.diffusion.kind = "continuous"  # diffax.continuous rather than GaussianDiffusion.
    config.diffusion.gamma_schedule = "learned"  # continuous.SCHEDULES: VDM's monotone network.
    config.diffusion.gamma_min = -13.3  # -log SNR at t = 0 (the learned schedule's start).
    config.diffusion.gamma_max = 5.0  # -log SNR at t = 1 (the learned schedule's start).
    config.diffusion.schedule_hidden = 1024  # Width of the schedule's non-linear branch (VDM).
    config.diffusion.weighting = "elbo"  # continuous.WEIGHTINGS: train on the bound itself.
    config.diffusion.min_snr_gamma = 5.0  # Min-SNR-k clamp, read only by weighting="min_snr".
    # sin/cos(2^n pi x) input features: a period 2^(1-n) of one or two bins of width 2/16.
    config.model.unet.fourier_features = (3, 4)
    config.eval.bpd_t_samples = 4  # Times per example in continuous.bound_bpd.

    config.diffusion.mean_type = "eps"  # VDM's parametrisation.
    # The reverse process is fixed by the bound (no learned variance): C output channels.
    config.diffusion.var_type = "fixed_small"
    config.diffusion.loss_type = "mse"  # Unused by continuous training; keeps validation happy.
    config.model.class_cond = False
    config.training.label_dropout = 0.0
    config.eval.guidance_scale = 0.0
    config.eval.sampler = "ancestral"  # VDM's sampler on continuous.sampling_grid's uniform t.
    config.eval.sample_steps = 100
    return config
