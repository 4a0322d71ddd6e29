"""Installs diffax: Gaussian diffusion models in JAX/Flax."""

import setuptools

setuptools.setup(
    name="diffax",
    version="0.1.0",
    description="Gaussian diffusion models (DDPM, improved DDPM, DDIM) in JAX and Flax.",
    packages=setuptools.find_packages(include=["diffax", "diffax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.7.0",
        "flax>=0.11.0",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "chex>=0.1.89",
        "ml-collections>=1.0.0",
        "absl-py>=2.1.0",
        "numpy>=1.26",
        "pillow>=10.0",
        "tensorflow-cpu>=2.18",
        "tensorflow-datasets>=4.9.7",
        "importlib_resources>=6.0",  # TFDS needs it to prepare data sets from builder code.
        "tensorboard>=2.18",  # Event files for tf.summary.
        "scikit-learn>=1.4",
        "etils[epath,epy]>=1.9",  # Paths for orbax and TFDS; epy.lazy_imports (TensorFlow).
        "tqdm>=4.60",  # The progress bar on a terminal.
        "safetensors>=0.4",  # Pretrained autoencoder (VAE) weights in diffusers' format.
        "diffrax>=0.7",  # Adaptive ODE solvers for the probability-flow likelihood.
    ],
    extras_require={
        "test": [
            "pytest>=8.0",
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            "scipy>=1.11",
            "ruff>=0.6",
        ],
        # benchmarks/peer_benchmark.py's PyTorch side (best in its own environment: see
        # benchmarks/peer/README.md); improved-diffusion itself is a checkout, not a package.
        "bench": ["torch>=2.0", "numpy>=1.26"],
        # Reading published .pt checkpoints (diffax.tools.import_checkpoint, weight_files); a
        # .safetensors or .npz of the same state dict needs no PyTorch.
        "convert": ["torch>=2.0"],
    },
)
