"""Which config differences eval and sample refuse: those that change what the parameters mean."""

import json

from configs import digits
from diffax import restore


def _saved(**changes) -> dict:
    """Returns configs/digits.py as saved beside a checkpoint, with dotted fields changed."""
    config = digits.get_config()
    config.update_from_flattened_dict(changes)
    return json.loads(config.to_json_best_effort())


def test_eval_only_training_only_and_compute_fields_may_differ():
    saved = _saved(
        **{
            "eval.sampler": "dpmpp_2m",
            "eval.guidance_scale": 3.0,
            "eval.num_samples": 7,
            "training.learning_rate": 1.0,
            "diffusion.loss_type": "kl",
            "model.dtype": "bfloat16",
            "model.remat": True,
        }
    )
    assert restore.changed_meaning_fields(digits.get_config(), saved) == []


def test_the_process_the_network_and_the_data_shape_may_not():
    saved = _saved(
        **{
            "diffusion.mean_type": "x0",
            "diffusion.schedule": "linear",
            "model.unet.channel_mult": (1, 1),
            "model.class_cond": False,
            "data.num_levels": 256,
        }
    )
    assert restore.changed_meaning_fields(digits.get_config(), saved) == [
        "data.num_levels=17 (saved: 256)",
        "diffusion.mean_type='eps' (saved: 'x0')",
        "diffusion.schedule='cosine' (saved: 'linear')",
        "model.class_cond=True (saved: False)",
        "model.unet.channel_mult=(1, 2) (saved: (1, 1))",
    ]


def test_a_field_an_older_diffax_did_not_save_is_not_compared():
    saved = _saved(**{"diffusion.mean_type": "v"})
    del saved["diffusion"]["mean_type"], saved["model"]["text"]
    assert restore.changed_meaning_fields(digits.get_config(), saved) == []
