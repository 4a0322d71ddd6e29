"""diffax: Gaussian diffusion models (DDPM, improved DDPM, DDIM) in JAX and Flax."""

__version__ = "0.1.0"
