"""What every evaluator shares: its inputs (`Context`), the eval split batched per process, the
non-finite check and the one writer of `eval_<step>.json`.

An evaluator is a module of this package with `evaluate(context) -> dict` of named figures
(scalars under "test/", "samples/" or "latent/", plus file paths and labels);
`diffax.evaluators.run` runs the ones a config lists.
"""

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from diffax import input_pipeline, sharding, summaries


@dataclasses.dataclass
class Context:
    """The parameters under evaluation and what they are evaluated with."""

    config: ml_collections.ConfigDict
    workdir: str
    model: Any
    process: Any
    mesh: jax.sharding.Mesh
    params: Any
    step: int
    latent: Any = None  # diffax.latents.LatentSpace of latent diffusion, else None.

    @property
    def args(self) -> tuple:
        """Returns (config, model, process, mesh, params): the bound functions' arguments."""
        return (self.config, self.model, self.process, self.mesh, self.params)

    def eval_batches(self, data_config: ml_collections.ConfigDict | None = None) -> Iterator:
        """Returns this process's masked batches of the eval split (eval.batch_size in all,
        eval.num_bpd_examples of them, -1 for all): the one place the split is batched."""
        return eval_batches(self.config, data_config)


def eval_batches(
    config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict | None = None
) -> Iterator:
    """Returns this process's masked batches of data_config's (default config.data's) eval split."""
    local = sharding.per_process_batch_size(config.eval.batch_size, "eval.batch_size")
    return input_pipeline.create_eval_iterator(
        data_config or config.data, local, num_examples=config.eval.num_bpd_examples
    )


def scalars(results: dict[str, Any]) -> dict[str, float]:
    """Returns the figures to log and check: numbers under a "section/" name."""
    return {
        k: v
        for k, v in results.items()
        if "/" in k and isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
    }


def check_finite(figures: dict[str, float], step: int) -> None:
    """Raises FloatingPointError naming the non-finite figures: they are no result to report."""
    bad = sorted(name for name, value in figures.items() if not np.isfinite(value))
    if bad:
        raise FloatingPointError(
            f"Evaluation at step {step} gave non-finite {', '.join(bad)}; the checkpoint's "
            "parameters are not usable (no eval file was written)."
        )


def write_results(workdir: str, step: int, results: dict[str, Any], writer=None) -> None:
    """Logs the scalars to TensorBoard and writes eval_<step>.json on process 0."""
    summaries.write_scalars(writer, step, scalars(results))
    if jax.process_index() == 0:
        path = epath.Path(workdir) / f"eval_{step:08d}.json"
        path.write_text(json.dumps(results, indent=2))
        logging.info("Eval at step %d: %s (written to %s)", step, results, path)
