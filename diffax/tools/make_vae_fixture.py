"""Writes the fixture of `tests/vae_weights_test.py`: a tiny random diffusers AutoencoderKL.

Needs torch and diffusers, which diffax does not depend on: run it in a separate environment,
from the repository root, e.g.

    python3 -m venv /tmp/vae-venv
    /tmp/vae-venv/bin/pip install torch diffusers safetensors numpy absl-py
    PYTHONPATH=. HF_HUB_OFFLINE=1 /tmp/vae-venv/bin/python -m diffax.tools.make_vae_fixture

It builds the reference implementation's `AutoencoderKL` on the CPU with random weights (every
tensor perturbed, so a swapped GroupNorm scale and bias or a transposed kernel shows), stores the
weights as float16 (small enough to commit; the reference runs in float32 on exactly those
float16 values), and writes into --output_dir:
- `config.json` and `diffusion_pytorch_model.safetensors`, as `save_pretrained` writes them;
- `reference.npz`: `image` [B, H, W, C] in [-1, 1], the encoder's `mean` and `logvar`
  [B, H/f, W/f, z] and `decoded` [B, H, W, C] = decode(mean), all float32 and NHWC;
- `sd_layout.json`: {name: shape} of the reference's tensors at Stable Diffusion's size
  (block_out_channels (128, 256, 512, 512), layers_per_block 2), to check the name mapping at full
  size without its 335 MB of weights.
Nothing in diffax imports this module; the tests need only its output.
"""

import json
import os
import shutil
import tempfile

import numpy as np
from absl import flags

from diffax import tools

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "tests/data/vae_tiny", "Where the fixture goes.")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the weights and the input batch.")
_BLOCK_OUT_CHANNELS = flags.DEFINE_list(
    "block_out_channels", ["8", "16", "16"], "Widths per level; f = 2**(levels - 1)."
)
_LAYERS_PER_BLOCK = flags.DEFINE_integer("layers_per_block", 1, "Resnets per encoder level.")
_NORM_NUM_GROUPS = flags.DEFINE_integer("norm_num_groups", 4, "GroupNorm groups.")
_LATENT_CHANNELS = flags.DEFINE_integer("latent_channels", 4, "z channels.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 16, "Side of the square input images.")
_CHANNELS = flags.DEFINE_integer("channels", 3, "Image channels.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 2, "Images in the reference batch.")
_SCALING_FACTOR = flags.DEFINE_float("scaling_factor", 0.25, "Written into config.json.")


def _perturb(model, generator) -> None:
    """Moves every parameter off its initial value (GroupNorm starts at scale 1, bias 0)."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("bias") or "norm" in name:
                param.add_(0.2 * noise)
            else:
                param.mul_(1.0 + 0.1 * noise)


def _to_nhwc(tensor) -> np.ndarray:
    """Returns a [B, C, H, W] torch tensor as a float32 [B, H, W, C] array."""
    return np.ascontiguousarray(tensor.detach().float().numpy().transpose(0, 2, 3, 1))


def _sd_layout() -> dict[str, list[int]]:
    """Returns {name: shape} of the reference AutoencoderKL at Stable Diffusion's size (meta)."""
    import torch
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        model = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            norm_num_groups=32,
        )
    return {name: list(t.shape) for name, t in model.state_dict().items()}


def main(argv):
    del argv
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(_SEED.value)
    generator = torch.Generator().manual_seed(_SEED.value)
    widths = tuple(int(c) for c in _BLOCK_OUT_CHANNELS.value)
    model = AutoencoderKL(
        in_channels=_CHANNELS.value,
        out_channels=_CHANNELS.value,
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=widths,
        layers_per_block=_LAYERS_PER_BLOCK.value,
        latent_channels=_LATENT_CHANNELS.value,
        norm_num_groups=_NORM_NUM_GROUPS.value,
        sample_size=_IMAGE_SIZE.value,
        scaling_factor=_SCALING_FACTOR.value,
    ).eval()
    _perturb(model, generator)
    # Round the weights to float16 once; the reference then runs in float32 on those values.
    model = model.half().float()

    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model.half().save_pretrained(tmp, safe_serialization=True)
        model.float()
        for name in ("config.json", "diffusion_pytorch_model.safetensors"):
            shutil.copyfile(os.path.join(tmp, name), os.path.join(_OUTPUT_DIR.value, name))

    size = _IMAGE_SIZE.value
    image = torch.rand((_BATCH_SIZE.value, _CHANNELS.value, size, size), generator=generator)
    image = 2.0 * image - 1.0
    with torch.no_grad():
        posterior = model.encode(image).latent_dist
        decoded = model.decode(posterior.mean).sample
    np.savez(
        os.path.join(_OUTPUT_DIR.value, "reference.npz"),
        image=_to_nhwc(image),
        mean=_to_nhwc(posterior.mean),
        logvar=_to_nhwc(posterior.logvar),
        decoded=_to_nhwc(decoded),
    )
    with open(os.path.join(_OUTPUT_DIR.value, "sd_layout.json"), "w") as f:
        json.dump(_sd_layout(), f, indent=0, sort_keys=True)
    total = sum(
        os.path.getsize(os.path.join(_OUTPUT_DIR.value, n)) for n in os.listdir(_OUTPUT_DIR.value)
    )
    print(f"Wrote {_OUTPUT_DIR.value}: {total / 1024:.0f} KiB.")


if __name__ == "__main__":
    tools.run(main)
