"""Converts the 2015 FID Inception weights to diffax's weight file.

`python -m diffax.tools.convert_inception --graph_def=classify_image_graph_def.pb --out=F.npz`
(TensorFlow's graph), or `--pytorch_fid=pt_inception-2015-12-05-6726825d.pth --out=F.npz`
(pytorch-fid's state dict of the same weights; a .pth needs torch, or give a .safetensors or
.npz of it). See diffax.metrics.inception for where they come from and the .npz format.
"""

from absl import flags

from diffax import tools, weight_files
from diffax.metrics import inception

_GRAPH_DEF = flags.DEFINE_string("graph_def", None, "classify_image_graph_def.pb")
_PYTORCH_FID = flags.DEFINE_string(
    "pytorch_fid", None, "pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or its .npz)."
)
_OUT = flags.DEFINE_string("out", None, "Output .npz path.")


def main(argv) -> None:
    """Writes --out from --graph_def or --pytorch_fid."""
    del argv
    if bool(_GRAPH_DEF.value) == bool(_PYTORCH_FID.value):
        raise ValueError("Give exactly one of --graph_def and --pytorch_fid.")
    if _GRAPH_DEF.value:
        tools.require_files(_GRAPH_DEF.value)
        inception.convert_graph_def(_GRAPH_DEF.value, _OUT.value)
    else:
        state_dict = weight_files.read_state_dict(_PYTORCH_FID.value)
        inception.convert_pytorch_fid(state_dict, _OUT.value, _PYTORCH_FID.value)


if __name__ == "__main__":
    tools.run(main, required=["out"])
