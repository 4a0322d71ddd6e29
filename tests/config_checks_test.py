"""Configs written before config.model was split by part still restore, and build the same model."""

import jax.numpy as jnp
import ml_collections
import pytest

from configs import digits_dit
from diffax import build, checkpointing, config_checks

# configs/digits_dit.py's model section as diffax saved it beside a checkpoint before the split
# (the JSON of config.model at commit 58a7fd7): flat, with the DiT's 4 heads in `num_heads`.
FLAT_DIGITS_DIT = {
    "name": "dit", "ch": 32, "channel_mult": [1, 2], "num_res_blocks": 1,
    "attention_resolutions": [4], "num_heads": 4, "num_head_channels": 32, "dropout": 0.0,
    "resblock_updown": False, "use_scale_shift_norm": True, "class_cond": True,
    "dtype": "float32", "remat": False, "fourier_features": [], "text_cond": False,
    "text_width": 128, "text_depth": 2, "text_heads": 4, "text_pool": True,
    "text_positions": "learned", "patch_size": 2, "hidden_size": 128, "depth": 6,
    "mlp_ratio": 4.0, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
    "z_channels": 4, "norm_num_groups": 32, "disc_ndf": 64, "disc_layers": 3,
}  # fmt: skip


def _old_saved_config() -> dict:
    saved = digits_dit.get_config().to_dict()
    saved["model"] = dict(FLAT_DIGITS_DIT)
    return saved


def test_an_old_flat_model_section_builds_the_model_it_was_trained_as():
    upgraded = ml_collections.ConfigDict(config_checks.upgrade_model_section(_old_saved_config()))
    model = build.create_model(upgraded)
    assert (model.hidden_size, model.depth, model.num_heads, model.patch_size) == (128, 6, 4, 2)
    assert model.num_classes == 10 and model.dtype == jnp.float32
    assert repr(model) == repr(build.create_model(digits_dit.get_config()))
    assert upgraded.model.text.num_heads == 4 and upgraded.model.discriminator.num_layers == 3


def test_a_current_config_is_left_as_it_is():
    current = digits_dit.get_config().to_dict()
    assert config_checks.upgrade_model_section(current) is current


def test_a_checkpoint_saved_with_an_old_config_restores_it_split(tmp_path):
    old = ml_collections.ConfigDict(_old_saved_config())
    state = {"w": jnp.ones((2, 2))}
    with checkpointing.managed(str(tmp_path), max_to_keep=1, async_save=False) as manager:
        assert checkpointing.save(manager, 1, state, old)
    manager = checkpointing.create_manager(str(tmp_path), read_only=True)
    try:
        saved = checkpointing.saved_config(manager)
    finally:
        checkpointing.close(manager)
    assert "ch" not in saved["model"] and saved["model"]["dit"]["num_heads"] == 4
    assert saved["model"]["unet"]["ch"] == 32 and saved["model"]["classifier"]["ch"] == 32


@pytest.mark.parametrize(
    ("value", "low", "high", "flags", "sentence"),
    [
        (float("inf"), 0.0, float("inf"), {}, "a.b=inf must be a finite number >= 0."),
        (float("-inf"), -float("inf"), float("inf"), {}, "a.b=-inf must be a finite number."),
        (float("nan"), 0.0, 1.0, {}, "a.b=nan must be a finite number in [0, 1]."),
        (0.0, 0.0, float("inf"), {"low_open": True}, "a.b=0.0 must be a finite number > 0."),
        (1.0, 0.0, 1.0, {"high_open": True}, "a.b=1.0 must be a finite number in [0, 1)."),
        (True, 0.0, 1.0, {}, "a.b=True must be a finite number in [0, 1]."),
        (None, -1.0, float("inf"), {}, "a.b=None must be a finite number >= -1."),
    ],
)
def test_a_number_must_be_finite_and_in_range_and_the_sentence_says_the_range(
    value, low, high, flags, sentence
):
    with pytest.raises(config_checks.ConfigError) as error:
        config_checks.number(value, "a.b", low, high, **flags)
    assert str(error.value) == sentence


def test_a_large_integer_is_a_finite_number():
    config_checks.number(10**400, "a.b", 0.0)  # math.isfinite would overflow on it.
    config_checks.count_or_all(-1, "a.b", "all")
    with pytest.raises(
        config_checks.ConfigError, match=r"a\.b=0 must be a positive integer, or -1"
    ):
        config_checks.count_or_all(0, "a.b", "all")
