"""Imports a published checkpoint into a new diffax workdir, ready for --mode=sample and eval.

    python -m diffax.tools.import_checkpoint --source=guided-diffusion \\
        --checkpoint=256x256_diffusion.pt --config=configs/published/adm_imagenet256_cond.py \\
        --workdir=workdirs/adm_imagenet256_cond
    python -m diffax.main --config=configs/published/adm_imagenet256_cond.py \\
        --workdir=workdirs/adm_imagenet256_cond --mode=sample --num_samples=16

--source: `guided-diffusion` (the ADM U-Nets, noisy classifiers and upsamplers),
`improved-diffusion` (its U-Nets; diffax.openai_weights) or `dit` (facebookresearch/DiT;
diffax.dit_weights). --checkpoint: the state dict as `.pt` (needs PyTorch: pip install -e
".[convert]"), `.safetensors` or `.npz`. Everything is checked before the workdir is created:
the config (as diffax.main checks it), that the workdir holds no checkpoint, and that the file's
tensors fit the config's model exactly (a misfit is one sentence naming the tensors, what the
file holds and the config fields they depend on). The workdir then holds an ordinary orbax
checkpoint at step 0 whose parameters and EMA parameters are the imported ones (the optimizer
state freshly initialised, so --mode=train fine-tunes from them) and the config, as training
writes them.
"""

import os

import jax
import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from diffax import (
    build,
    checkpointing,
    dit_weights,
    models,
    openai_weights,
    sharding,
    tasks,
    tools,
    validation,
    weight_files,
    workdir_lock,
)

SOURCES = (*openai_weights.SOURCES, "dit")
# --source -> the config.model.name values its checkpoints can fill.
BACKBONES = {
    "guided-diffusion": ("unet", "noisy_classifier"),
    "improved-diffusion": ("unet",),
    "dit": ("dit",),
}


def define_flags() -> None:
    """Defines the tool's flags (at run time: importing the module defines none)."""
    flags.DEFINE_enum("source", None, SOURCES, "Where the checkpoint comes from.")
    flags.DEFINE_string("checkpoint", None, "The state dict: .pt, .safetensors or .npz.")
    config_flags.DEFINE_config_file("config", None, "The model's config (configs/published/...).")
    flags.DEFINE_string("workdir", None, "A new workdir for the imported checkpoint.")


def check_config(config: ml_collections.ConfigDict, source: str) -> None:
    """Raises ValueError in one sentence unless the config is valid and builds a model that
    `source`'s checkpoints can fill."""
    validation.validate_config(config)
    name = config.model.name
    if name not in BACKBONES[source]:
        raise ValueError(
            f"model.name={name!r}: {source} checkpoints fill "
            f"{' or '.join(map(repr, BACKBONES[source]))} models."
        )
    if tasks.kind(config) not in ("denoiser", "classifier"):
        raise ValueError(
            f"diffusion.kind={config.diffusion.kind!r}: published checkpoints are discrete-time "
            "denoisers or noisy classifiers; use diffusion.kind='discrete'."
        )
    if build.is_inpainting(config) or build.is_text_conditioned(config):
        raise ValueError(
            "inpainting.mask_cond and model.text_cond must be False: no published checkpoint "
            "diffax imports has those inputs."
        )


def check_workdir(workdir: str) -> None:
    """Raises an OSError in one sentence if `workdir` is a file or already holds a checkpoint."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(f"--workdir={workdir} is a file, not a folder.")
    directory = checkpointing.checkpoint_dir(workdir)
    if os.path.isdir(directory) and os.listdir(directory):
        raise FileExistsError(
            f"--workdir={workdir} already holds checkpoints in {directory}: import into a new "
            "workdir (an import never overwrites one)."
        )


def convert(config: ml_collections.ConfigDict, source: str, path: str):
    """Returns the config's model parameters (float32 numpy leaves) from the state dict at
    `path`; ValueError in one sentence when its tensors do not fit."""
    model = build.create_model(config)
    state_dict = weight_files.read_state_dict(path)
    shape = build.image_shape(config)
    if source == "dit":
        return dit_weights.convert_state_dict(state_dict, model, shape, source=path)
    return openai_weights.convert_state_dict(state_dict, model, shape, source=path, origin=source)


def write(config: ml_collections.ConfigDict, params, workdir: str) -> int:
    """Creates `workdir` and saves the step-0 state holding `params` (and their EMA copies) with
    the config; returns the number of parameters."""
    mesh = sharding.create_mesh(config.mesh.data, config.mesh.fsdp)
    model, tx = build.create_model(config), tasks.create_optimizer(config)
    abstract, shardings = tasks.abstract_state(config, model, tx, mesh)
    # The converters derive every leaf from this model: the trees agree; say so if not.
    want = jax.tree.map(lambda a: a.shape, abstract.params)
    if jax.tree.map(lambda a: a.shape, params) != want:
        raise ValueError("The imported parameters do not have the shapes of the config's model.")
    params = jax.device_put(params, shardings.params)
    make = jax.jit(
        lambda p, rng: tasks.state_from_params(p, rng, tx=tx, config=config),
        out_shardings=shardings,
    )
    state = make(params, jax.random.PRNGKey(config.seed))
    os.makedirs(workdir, exist_ok=True)
    lock = workdir_lock.acquire(workdir, "import")
    try:
        with checkpointing.managed(workdir) as manager:
            checkpointing.save(manager, 0, state, config)
            checkpointing.wait(manager)
    finally:
        lock.release()
    return models.count_params(state.params)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax's INFO lines; the one summary is printed.
    FLAGS = flags.FLAGS
    config, source, workdir, checkpoint = (
        FLAGS.config,
        FLAGS.source,
        FLAGS.workdir,
        FLAGS.checkpoint,
    )
    check_config(config, source)
    check_workdir(workdir)
    tools.require_files(checkpoint)
    params = convert(config, source, checkpoint)
    count = write(config, params, workdir)
    print(
        f"Imported {count:,} parameters from {checkpoint} ({source}) into {workdir} (step "
        f"0, parameters and EMA); sample with: python -m diffax.main "
        f"--config={config_flags.get_config_filename(flags.FLAGS['config'])} --workdir={workdir} "
        "--mode=sample"
    )


if __name__ == "__main__":
    define_flags()
    tools.run(main, required=["source", "checkpoint", "config", "workdir"])
