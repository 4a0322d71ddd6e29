"""Converts the official LPIPS-VGG16 torch files into the one weights file diffax reads.

`python -m diffax.tools.convert_lpips --vgg16=vgg16-397923af.pth --lin=vgg.pth
--out=lpips_vgg16.safetensors` (or `--out=....npz`): --vgg16 is torchvision's ImageNet vgg16
state dict (its `features.N.weight/bias` are kept), --lin is lpips' `weights/v0.1/vgg.pth` (its
`linK.model.1.weight`). Needs torch (imported here only); the written file is checked by
diffax.metrics.lpips.load_params before the tool reports success.
"""

from absl import flags, logging

from diffax import tools
from diffax.metrics import lpips


def define_flags() -> None:
    """Defines the tool's flags (at run time: importing the module defines none)."""
    flags.DEFINE_string("vgg16", None, "torchvision vgg16 state dict (.pth).")
    flags.DEFINE_string("lin", None, "lpips v0.1 vgg.pth (the lin layers).")
    flags.DEFINE_string("out", None, "Output .safetensors or .npz path.")


def convert(vgg16_path: str, lin_path: str, out: str) -> tuple[int, ...]:
    """Writes out from the two torch files; returns the widths the loader read back."""
    import torch  # Only this tool needs torch.

    wanted = lpips.expected_shapes()
    tensors = {}
    for path in (vgg16_path, lin_path):
        state = torch.load(path, map_location="cpu", weights_only=True)
        tensors.update({k: v.float().numpy() for k, v in state.items() if k in wanted})
    lpips.save_tensors(tensors, out)
    _, widths = lpips.load_params(out)  # Refuses (naming the tensors) what does not fit.
    return widths


def main(argv) -> None:
    """Writes --out from --vgg16 and --lin."""
    del argv
    values = flags.FLAGS
    tools.require_files(values.vgg16, values.lin)
    widths = convert(values.vgg16, values.lin, values.out)
    logging.info("Wrote %s (LPIPS-VGG16, widths %s).", values.out, widths)


if __name__ == "__main__":
    define_flags()
    tools.run(main, required=["vgg16", "lin", "out"])
