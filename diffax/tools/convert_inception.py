"""Converts the 2015 FID Inception graph to diffax's weight file.

`python -m diffax.tools.convert_inception --graph_def=classify_image_graph_def.pb --out=F.npz`
(see diffax.metrics.inception for where the graph comes from and the .npz format).
"""

from absl import flags

from diffax import tools
from diffax.metrics import inception

_GRAPH_DEF = flags.DEFINE_string("graph_def", None, "classify_image_graph_def.pb")
_OUT = flags.DEFINE_string("out", None, "Output .npz path.")


def main(argv) -> None:
    """Writes --out from --graph_def."""
    del argv
    tools.require_files(_GRAPH_DEF.value)
    inception.convert_graph_def(_GRAPH_DEF.value, _OUT.value)


if __name__ == "__main__":
    tools.run(main, required=["graph_def", "out"])
