"""Writes the fixture of `tests/dit_weights_test.py`: a tiny random DiT of Meta's own code.

Needs torch, timm and a checkout of facebookresearch/DiT (its `models.py`), which diffax does not
depend on: run it in a separate environment, from the repository root, e.g.

    python3 -m venv /tmp/dit-venv && /tmp/dit-venv/bin/pip install torch timm numpy absl-py
    git clone https://github.com/facebookresearch/DiT /tmp/DiT
    PYTHONPATH=. /tmp/dit-venv/bin/python -m diffax.tools.make_dit_fixture --dit_repo=/tmp/DiT

It builds DiT's `DiT` with the given size, learned sigma and class dropout (so the label table has
the null row), re-draws EVERY parameter from N(0, 0.1^2) (DiT zero-initialises its adaLN and output
layers, which would hide a transposed or misnamed tensor), rounds the weights to float16 (small to
commit; the reference runs in float32 on exactly those values), and writes into --output_dir:
- `dit.npz`: the state dict, float16 (pos_embed float32), DiT's own names;
- `reference.npz`: `x` [B, H, W, C] (NHWC), `t` [B] int, `y` [B] int (one null label K) and
  `out` [B, H, W, 2C], DiT's forward in eval mode, float32, NHWC;
- `config.json`: the DiT arguments used.
With --full_size it instead builds DiT-XL/2 on 32x32x4 latents with 1000 classes (Peebles & Xie
2023, Table 1: the 256x256 ImageNet model) and writes `dit_xl2_layout.json`, {name: shape} of its
state dict, and prints its parameter count, to check diffax's names and count at full size
without its 2.7 GB of weights.
Nothing in diffax imports this module; the tests need only its output.
"""

import json
import os
import sys

import numpy as np
from absl import flags

from diffax import tools

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the tool's flags (at run time: make_vae_fixture also has --output_dir and --seed)."""
    flags.DEFINE_string("output_dir", "tests/data/dit_tiny", "Where the fixture goes.")
    flags.DEFINE_string("dit_repo", None, "A checkout of facebookresearch/DiT.")
    flags.DEFINE_integer("seed", 0, "Seeds the weights and the inputs.")
    flags.DEFINE_bool("full_size", False, "Print DiT-XL/2's parameter count instead.")


# The tiny DiT: 8x8x4 inputs in 2x2 patches (16 tokens), 2 blocks of width 32, 10 classes.
TINY = dict(
    input_size=8,
    patch_size=2,
    in_channels=4,
    hidden_size=32,
    depth=2,
    num_heads=4,
    mlp_ratio=4.0,
    class_dropout_prob=0.1,
    num_classes=10,
    learn_sigma=True,
)
BATCH = 3


def main(argv):
    del argv
    import torch  # The fixture environment's, not diffax's.

    sys.path.insert(0, os.path.abspath(FLAGS.dit_repo))
    from models import DiT, DiT_XL_2  # facebookresearch/DiT's models.py.

    if FLAGS.full_size:
        model = DiT_XL_2(input_size=32, num_classes=1000)
        layout = {k: list(v.shape) for k, v in model.state_dict().items()}
        os.makedirs(FLAGS.output_dir, exist_ok=True)
        with open(os.path.join(FLAGS.output_dir, "dit_xl2_layout.json"), "w") as f:
            json.dump(layout, f, indent=0)
        print(json.dumps({"DiT-XL/2 parameters": sum(p.numel() for p in model.parameters())}))
        return
    torch.manual_seed(FLAGS.seed)
    model = DiT(**TINY).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name != "pos_embed":  # The fixed sine-cosine code stays as DiT computes it.
                param.copy_(torch.randn_like(param) * 0.1)
                param.copy_(param.half().float())  # The float16 file holds exactly these.
    rng = np.random.default_rng(FLAGS.seed)
    size, channels = TINY["input_size"], TINY["in_channels"]
    x = rng.standard_normal((BATCH, size, size, channels)).astype(np.float32)
    t = np.array([0, 500, 999], np.int64)
    y = np.array([3, 7, TINY["num_classes"]], np.int64)  # The last one the null label.
    with torch.no_grad():
        out = model(
            torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t), torch.from_numpy(y)
        )
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    # float16 weights; the fixed pos_embed stays float32, as diffax computes it.
    state = {
        k: v.detach().numpy() if k == "pos_embed" else v.detach().half().numpy()
        for k, v in model.state_dict().items()
    }
    np.savez(os.path.join(FLAGS.output_dir, "dit.npz"), **state)
    np.savez(
        os.path.join(FLAGS.output_dir, "reference.npz"),
        x=x,
        t=t.astype(np.int32),
        y=y.astype(np.int32),
        out=out.permute(0, 2, 3, 1).numpy().astype(np.float32),
    )
    with open(os.path.join(FLAGS.output_dir, "config.json"), "w") as f:
        json.dump(TINY, f, indent=2)
    print(f"Wrote {FLAGS.output_dir}: {len(state)} tensors.")


if __name__ == "__main__":
    define_flags()
    tools.run(main, required=["dit_repo"])
