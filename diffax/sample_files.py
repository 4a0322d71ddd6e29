"""Sample grids and arrays written into a workdir, with the layout the model's labels suggest.

A sample file's name says what made it (kind, step, sampler and steps, guidance, prompt, count),
and a name already taken gets the next free `_2`, `_3`, ...: samples never overwrite samples.
"""

import hashlib
import os

import jax
import ml_collections
import numpy as np

from diffax import build, images


def sample_name(
    config: ml_collections.ConfigDict,
    kind: str,
    step: int,
    num_samples: int,
    prompt: str | None = None,
) -> str:
    """Returns e.g. "samples_00000004_ddim10_g2_p1f0a9c3e_n16": the kind, the checkpoint's step,
    eval.sampler with its steps, the guidance and classifier scales when set, the prompt's hash
    when given, and the count."""
    ev = config.eval
    steps = ev.sample_steps or config.diffusion.num_timesteps
    parts = [kind, f"{step:08d}", f"{ev.sampler}{steps}"]
    if ev.guidance_scale:
        parts.append(f"g{ev.guidance_scale:g}")
    if ev.get("classifier_scale"):
        parts.append(f"c{ev.classifier_scale:g}")
    if prompt is not None:
        parts.append("p" + hashlib.sha256(prompt.encode("utf-8", "replace")).hexdigest()[:8])
    return "_".join([*parts, f"n{num_samples}"])


def unused_name(workdir: str, name: str) -> str:
    """Returns name, or name_2, name_3, ...: the first that no file of the workdir is named by
    (name.png, name.npz, name_chain.gif, ...)."""
    stems = {f.rsplit(".", 1)[0] for f in os.listdir(workdir)} if os.path.isdir(workdir) else set()

    def taken(candidate: str) -> bool:
        return any(
            stem == candidate
            or (stem.startswith(candidate + "_") and stem[len(candidate) + 1 :].isalpha())
            for stem in stems
        )

    candidate, n = name, 1
    while taken(candidate):
        n += 1
        candidate = f"{name}_{n}"
    return candidate


def check_finite(ev: ml_collections.ConfigDict, samples: np.ndarray, what: str) -> None:
    """Raises FloatingPointError in one sentence naming the sampling settings of `ev` (config.eval)
    if any sample is not finite: such samples are no result and are written nowhere."""
    if np.all(np.isfinite(samples)):
        return
    settings = [f"eval.sampler={ev.sampler!r}", f"eval.sample_steps={ev.sample_steps}"]
    suspects = []
    for field in ("guidance_scale", "classifier_scale"):
        if ev.get(field):
            settings.append(f"eval.{field}={ev[field]}")
            suspects.append(f"eval.{field}")
    advice = (
        f"lower {' or '.join(suspects)}, or try another eval.sampler"
        if suspects
        else "try another eval.sampler or more eval.sample_steps; if every sampler fails, the "
        "parameters are not usable"
    )
    raise FloatingPointError(
        f"{what} gave non-finite images with {', '.join(settings)}: {advice}. Nothing was written."
    )


def save_samples(
    config: ml_collections.ConfigDict,
    workdir: str,
    name: str,
    samples: np.ndarray,
    labels=None,
    columns: int | None = None,
    prompt: str | None = None,
) -> str:
    """Writes the samples' grid and .npz (with the prompt, when one made them) into the workdir
    on process 0; returns the png path."""
    if jax.process_index() != 0:
        return os.path.join(workdir, name + ".png")
    classes = build.num_classes(config)
    if build.is_text_conditioned(config) and labels is not None:
        classes = config.data.num_classes  # Held-out prompts cycle through the digits.
    columns = columns or images.grid_columns(len(samples), classes)
    extra = {} if prompt is None else {"prompt": np.asarray(prompt)}
    return images.save_samples(
        workdir, name, samples, config.data.num_levels, labels, columns=columns, **extra
    )
