"""configs/digits_text.py on text embeddings stored beside the data instead of its own encoder.

The embeddings come from outside the training run (issue 12 (b): large runs encode their captions
once, with CLIP or T5, not at every step); diffax.text_embeddings documents the .npz format. The
offline demonstration writes them for the digits captions with diffax's byte-level encoder:

    python -m diffax.tools.embed_captions --config=configs/digits_text.py \\
        --out='workdirs/digits_text_emb/{split}.npz' [--encoder_workdir=workdirs/digits_text]
    python -m diffax.main --config=configs/digits_text_npz.py --workdir=workdirs/digits_text_npz
"""

from configs import digits_text


def get_config():
    """Returns the digits text config on stored embeddings (D = model.text.width = 64)."""
    config = digits_text.get_config()
    config.data.text_embeddings = "workdirs/digits_text_emb/{split}.npz"
    return config
