"""Entry point: `python -m diffax.main --config=configs/digits.py --workdir=DIR [--mode=...]`.

Kept short on purpose: flags, distributed start-up, then one call into the library.
"""

import os
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (with --config.a.b=v overrides).")
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs, samples and eval files.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"], "What to run.")
flags.DEFINE_integer(
    "num_samples", None, "sample mode: images to generate (default eval.num_samples)."
)
flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "jax.distributed.initialize(): auto starts it on TPU pods, SLURM and when a "
    "coordinator address is given.",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from diffax import distributed, evaluate, preemption, train

    distributed.initialize(
        FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
    os.makedirs(FLAGS.workdir, exist_ok=True)
    logging.get_absl_handler().use_absl_log_file("diffax", FLAGS.workdir)
    FLAGS.alsologtostderr = True  # The log file in the workdir, and the console too.
    try:
        if FLAGS.mode == "train":
            train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
        elif FLAGS.mode == "eval":
            evaluate.evaluate_checkpoint(FLAGS.config, FLAGS.workdir)
        else:
            evaluate.sample_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.num_samples)
    except preemption.Preempted as e:
        logging.warning("%s", e)
        sys.exit(preemption.PREEMPTED_EXIT_CODE)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        # One sentence on the console; the traceback goes to the log file in the workdir.
        FLAGS.alsologtostderr = False
        logging.error("Stopped: %s\n%s", e, traceback.format_exc())
        print(f"diffax: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
