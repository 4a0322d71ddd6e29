"""Stored text embeddings of the digits captions, offline: a demonstration of data.text_embeddings.

    python -m diffax.tools.embed_captions --config=configs/digits_text.py \\
        --out='workdirs/digits_text_emb/{split}.npz'

writes one .npz per split in diffax.text_embeddings's format (embeddings [N, L, D], mask [N, L],
index [N]): example i's caption (its label by a training template for data.train_split, by a
held-out one for any other split, fixed by (config.seed, i) as the input pipeline writes them)
encoded by diffax's byte-level encoder of the config's size. Its weights: --encoder_workdir's
newest checkpoint (a trained configs/digits_text.py run, EMA weights), or a fixed random
initialisation from --seed (a fixed random feature map of the bytes). An external encoder (CLIP,
T5) would write the same three arrays.
"""

import os

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from diffax import build, input_pipeline, restore, sharding, text_embeddings, tools
from diffax.datasets import captions
from diffax.models import text_encoder


def define_flags() -> None:
    """Defines the tool's flags (at run time: importing the module defines none)."""
    config_flags.DEFINE_config_file("config", None, "A text config (configs/digits_text.py).")
    flags.DEFINE_string("out", None, "Output path holding {split}, e.g. 'emb/{split}.npz'.")
    flags.DEFINE_list("splits", None, "Splits to embed (default: train and eval split).")
    flags.DEFINE_string(
        "encoder_workdir", None, "A trained text run whose encoder to use (default: random weights)"
    )
    flags.DEFINE_integer("seed", 0, "Seed of the random encoder weights.")
    flags.DEFINE_enum("dtype", "float16", ["float16", "float32"], "Stored dtype.")


def split_captions(config: ml_collections.ConfigDict, split: str) -> list[str]:
    """Returns the caption of each example of the whole split (a base name: "train"): training
    templates for data.train_split's, held-out ones otherwise, fixed by (config.seed, index)."""
    templates = "train" if split == text_embeddings.split_name(config.data.train_split) else "test"
    return captions.captions(
        input_pipeline.split_labels(config.data, split), config.seed, templates
    )


def encoder_params(config: ml_collections.ConfigDict, workdir: str | None, seed: int):
    """Returns (encoder, its params): a trained text run's EMA encoder, or a random one."""
    model = build.create_model(config)
    if workdir:
        mesh = sharding.create_mesh(config.mesh.data, config.mesh.fsdp)
        params, _ = restore.restore_eval_params(config, workdir, mesh)
        return model.encoder, jax.device_get(params["encoder"])
    tokens = text_encoder.null_tokens(1, config.data.text_length)
    return model.encoder, model.encoder.init(jax.random.PRNGKey(seed), tokens)["params"]


def embed(encoder, params, texts: list[str], length: int, batch_size: int = 256) -> dict:
    """Returns {"embeddings" float32 [N, L, D], "mask" bool [N, L], "index" int64 [N]} of texts."""
    tokens = text_encoder.tokenize(texts, length)
    apply = jax.jit(lambda t: encoder.apply({"params": params}, t))
    embeddings = np.concatenate(
        [np.asarray(apply(tokens[i : i + batch_size])) for i in range(0, len(tokens), batch_size)]
    )
    return {
        "embeddings": embeddings,
        "mask": np.asarray(text_encoder.token_mask(tokens)),
        "index": np.arange(len(texts), dtype=np.int64),
    }


def write(path: str, arrays: dict, dtype: str = "float16") -> None:
    """Writes arrays as an uncompressed .npz at path, embeddings cast to dtype."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **{**arrays, "embeddings": arrays["embeddings"].astype(dtype)})


def main(argv):
    del argv
    values = flags.FLAGS
    config, out = values.config, values.out
    if config is None or not out or "{split}" not in out:
        raise app.UsageError("--config and --out (a path holding {split}) are required.")
    if build.has_stored_embeddings(config) or not build.is_text_conditioned(config):
        raise app.UsageError("--config must be a text config with diffax's encoder.")
    encoder, params = encoder_params(config, values.encoder_workdir, values.seed)
    splits = values.splits or [config.data.train_split, config.data.eval_split]
    for split in dict.fromkeys(text_embeddings.split_name(s) for s in splits):  # Whole splits.
        arrays = embed(encoder, params, split_captions(config, split), config.data.text_length)
        path = text_embeddings.path_for(out, split)
        write(path, arrays, values.dtype)
        logging.info("Wrote %s: %s", path, {k: v.shape for k, v in arrays.items()})


if __name__ == "__main__":
    define_flags()
    tools.run(main, required=["config", "out"])
