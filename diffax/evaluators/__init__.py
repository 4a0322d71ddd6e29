"""Evaluators, one module each: `evaluate(context) -> dict` of named figures.

A config's task (`diffax.tasks`) names the evaluators it runs (eval.evaluators, or the kind's
defaults); `run` runs them in order, checks each one's figures are finite before the next starts,
and writes them all to `eval_<step>.json` in one place.
"""

from collections.abc import Callable, Sequence
from typing import Any

from diffax.evaluators import (
    bpd,
    classifier_accuracy,
    common,
    ode_bpd,
    reconstruction,
    samples,
)
from diffax.evaluators.common import Context

EVALUATORS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "bpd": bpd.evaluate,
    "conditional_bpd": bpd.evaluate_conditional,
    "ode_bpd": ode_bpd.evaluate,
    "samples": samples.evaluate,
    "classifier_accuracy": classifier_accuracy.evaluate,
    "reconstruction": reconstruction.evaluate,
}


def run(names: Sequence[str], context: Context, writer=None) -> dict[str, Any]:
    """Runs the named evaluators on context, writes eval_<step>.json and returns its contents:
    {"step", "params" ("ema" or "raw"), every evaluator's figures}."""
    config = context.config
    results: dict[str, Any] = {
        "step": context.step,
        "params": "ema" if config.eval.use_ema else "raw",
    }
    for name in names:
        figures = EVALUATORS[name](context)
        common.check_finite(common.scalars(figures), context.step)
        results.update(figures)
    common.write_results(context.workdir, context.step, results, writer)
    return results
