"""Sample quality against model evaluations: `python -m diffax.tools.sampler_table --config=C
--workdir=W` draws the same number of samples from a trained digits model with each sampler at
each NFE and prints a markdown table of the digits Fréchet distance and guided class accuracy.

NFE counts sequential model calls per sample (Heun: 2 per step but the last). Classifier-free
guidance runs as one call on a doubled batch, so every row costs twice its NFE in forward passes.
With --classifier_workdir it also tabulates classifier guidance of the unconditional model (the
null class, eval.guidance_scale=-1) at each --classifier_scales.
"""

import copy
import json
import os
import time

import jax
from absl import flags
from ml_collections import config_flags

from diffax import build, generate, restore, sharding, tasks, tools
from diffax.metrics import quality


def define_flags() -> None:
    """Defines the tool's flags (when run: importing the module defines none)."""
    config_flags.DEFINE_config_file("config", None, "The trained model's config.")
    flags.DEFINE_string("workdir", None, "The trained model's workdir.")
    flags.DEFINE_integer("num_samples", 400, "Samples per row.")
    flags.DEFINE_list("nfes", ["5", "10", "20", "50"], "Model evaluations per sample.")
    flags.DEFINE_list(
        "samplers", ["ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "heun"], "eval.sampler values."
    )
    flags.DEFINE_string("classifier_workdir", None, "A noisy classifier.")
    flags.DEFINE_list("classifier_scales", ["0", "1", "2", "4"], "Scales s.")
    flags.DEFINE_string("classifier_sampler", "ddpm", "Sampler for those rows.")
    flags.DEFINE_integer("classifier_steps", 100, "Its respaced steps.")
    flags.DEFINE_string("out", None, "Also write the rows as JSON here.")
    flags.DEFINE_bool("full_chain", True, "Include DDPM over every step (the slowest).")


def _steps_for(sampler: str, nfe: int) -> int:
    """Returns the step count that costs nfe model calls (Heun: 2 steps - 1)."""
    return (nfe + 1) // 2 if sampler == "heun" else nfe


def measure(config, params, mesh, num_samples: int, classifier=None) -> dict:
    """Returns {"nfe", "digits_fd", "digits_class_accuracy", "seconds"} of one sampler setting."""
    model, process = build.create_model(config), tasks.create_process(config)
    generator = generate.Generator(config, model, process, mesh, classifier=classifier)
    start = time.perf_counter()
    samples = generator.generate(params, num_samples, seed=1)
    seconds = time.perf_counter() - start
    classifier_path = config.eval.classifier_path or os.path.join(
        flags.FLAGS.workdir, "digits_classifier"
    )
    metrics = quality.digits_quality(
        samples, generator.labels(num_samples), classifier_path, config.data.num_levels
    )
    return {
        "nfe": generator.nfe,
        "forward_passes": generator.forward_passes_per_sample,
        "digits_fd": metrics["digits_fd"],
        "digits_fd_floor": metrics["digits_fd_test_vs_train"],
        "digits_class_accuracy": metrics["digits_class_accuracy"],
        "seconds": seconds,
    }


def _with(config, **fields):
    config = copy.deepcopy(config)
    for name, value in fields.items():
        config.eval[name] = value
    return config


def main(argv) -> None:
    """Prints the tables (and writes --out)."""
    del argv
    config = flags.FLAGS.config
    mesh = sharding.create_mesh()
    params, _ = restore.restore_eval_params(config, flags.FLAGS.workdir, mesh)
    rows, full = [], None
    if flags.FLAGS.full_chain:
        setting = _with(config, sampler="ddpm", sample_steps=0)
        full = measure(setting, params, mesh, flags.FLAGS.num_samples)
        rows.append({"sampler": "ddpm (every step)", **full})
    for nfe in map(int, flags.FLAGS.nfes):
        for sampler in flags.FLAGS.samplers:
            steps = _steps_for(sampler, nfe)
            row = measure(
                _with(config, sampler=sampler, sample_steps=steps),
                params,
                mesh,
                flags.FLAGS.num_samples,
            )
            rows.append({"sampler": sampler, **row})
            print(json.dumps(rows[-1]), flush=True)
    print("| sampler | NFE | digits FD | class accuracy | seconds |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['sampler']} | {row['nfe']} | {row['digits_fd']:.2f} | "
            f"{100 * row['digits_class_accuracy']:.1f}% | {row['seconds']:.1f} |"
        )
    if rows:
        floor = rows[-1]["digits_fd_floor"]
        print(f"(FD floor, real train digits at this sample size: {floor:.2f})")
    if flags.FLAGS.classifier_workdir:
        guided = []
        for scale in map(float, flags.FLAGS.classifier_scales):
            setting = _with(
                config,
                sampler=flags.FLAGS.classifier_sampler,
                sample_steps=flags.FLAGS.classifier_steps,
                guidance_scale=-1.0,  # The unconditional model: the null class.
                classifier_scale=scale,
                classifier_workdir=flags.FLAGS.classifier_workdir,
            )
            classifier = restore.guidance_classifier(setting.eval, setting.diffusion, mesh)
            row = measure(setting, params, mesh, flags.FLAGS.num_samples, classifier)
            guided.append({"classifier_scale": scale, **row})
            print(json.dumps(guided[-1]), flush=True)
        print("| classifier scale s | digits FD | class accuracy |")
        print("| --- | --- | --- |")
        for row in guided:
            print(
                f"| {row['classifier_scale']:g} | {row['digits_fd']:.2f} | "
                f"{100 * row['digits_class_accuracy']:.1f}% |"
            )
        rows += guided
    if flags.FLAGS.out and jax.process_index() == 0:
        with open(flags.FLAGS.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    define_flags()
    tools.run(main, required=["config", "workdir"])
