"""Checks `convert_inception --pytorch_fid` against pytorch-fid's network; writes its layout.

Needs torch and pytorch-fid, which diffax does not depend on: run it in a separate environment
that also has diffax's dependencies, from the repository root, e.g.

    /tmp/venv/bin/pip install torch pytorch-fid -e .
    PYTHONPATH=. /tmp/venv/bin/python -m diffax.tools.check_pytorch_fid

It builds pytorch-fid's FID Inception-v3 (`fid_inception_v3`'s architecture: torchvision's
Inception3 with 1008 classes and pytorch-fid's FIDInceptionA/C/E_1/E_2 blocks) with every weight
and BatchNorm statistic random (nothing is downloaded), saves its state dict as an .npz, converts
it with `diffax.metrics.inception.convert_pytorch_fid`, and prints the max abs differences of the
pool3 features and the logits on the same 299x299 images. It writes --layout, {name: shape} of
that state dict, which tests/inception_test.py checks the converter's names against.
"""

import json
import os
import tempfile

import numpy as np
from absl import flags

from diffax import tools

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the tool's flags (when run: importing the module defines none)."""
    flags.DEFINE_string(
        "layout", "tests/data/pytorch_fid_layout.json", "Where the state dict's layout goes."
    )
    flags.DEFINE_integer("seed", 0, "Seeds the weights and the images.")


def _pytorch_fid_network():
    """Returns pytorch-fid's FID Inception-v3 with random weights, in eval mode."""
    import torch
    from pytorch_fid import inception as fid_inception
    from torchvision.models.inception import inception_v3

    net = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=True)
    net.Mixed_5b = fid_inception.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fid_inception.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fid_inception.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fid_inception.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fid_inception.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fid_inception.FIDInceptionE_1(1280)
    net.Mixed_7c = fid_inception.FIDInceptionE_2(2048)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                tensor.copy_(torch.randn_like(tensor) * 0.1)
            elif name.endswith("weight") and "bn" in name:
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            elif tensor.is_floating_point():
                fan_in = max(int(np.prod(tensor.shape[1:])), 1)
                tensor.copy_(torch.randn_like(tensor) / np.sqrt(fan_in))
    return net.eval()


def main(argv):
    del argv
    import jax.numpy as jnp
    import torch

    from diffax.metrics import inception

    torch.manual_seed(FLAGS.seed)
    net = _pytorch_fid_network()
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    os.makedirs(os.path.dirname(FLAGS.layout) or ".", exist_ok=True)
    with open(FLAGS.layout, "w") as f:
        json.dump({k: list(v.shape) for k, v in state.items()}, f, indent=0)
    images = np.random.default_rng(FLAGS.seed).uniform(-1, 1, (2, 299, 299, 3)).astype(np.float32)
    pooled = {}
    net.avgpool.register_forward_hook(lambda module, i, out: pooled.update(out=out))
    with torch.no_grad():
        logits = net(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    pool = pooled["out"].flatten(1).numpy()
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "fid_inception.npz")
        inception.convert_pytorch_fid(state, path, "pytorch-fid's state dict")
        variables = inception.load_params(path)
    model = inception.InceptionV3FID()
    ours_pool, ours_logits = model.apply(variables, jnp.asarray(images))
    print(
        json.dumps(
            {
                "tensors": len(state),
                "pool3 max abs difference": float(np.max(np.abs(np.asarray(ours_pool) - pool))),
                "pool3 max abs": float(np.max(np.abs(pool))),
                "logits max abs difference": float(
                    np.max(np.abs(np.asarray(ours_logits) - logits))
                ),
                "logits max abs": float(np.max(np.abs(logits))),
            }
        )
    )


if __name__ == "__main__":
    define_flags()
    tools.run(main)
