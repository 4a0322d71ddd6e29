"""Tests of diffax.openai_weights: improved-diffusion and guided-diffusion state dicts in diffax.

The fixture (tests/data/openai_tiny, written by `python -m diffax.tools.make_openai_fixture` from
OpenAI's own unet.py) holds, per architecture family, the state dict's names and shapes and the
original model's output on fixed inputs; the weights are regenerated from the names and shapes
(`make_openai_fixture.fixture_state_dict`), every one random. `published_layouts.json.gz` lists
the names and shapes of each published model's state dict, at full size.
"""

import gzip
import importlib
import json
import math
import os

import jax
import numpy as np
import pytest

from diffax import build, models, openai_weights
from diffax.models import classifier, unet
from diffax.tools.make_openai_fixture import fixture_state_dict

DATA = os.path.join(os.path.dirname(__file__), "data", "openai_tiny")
FAMILIES = ("adm_new_order", "adm_legacy_order", "iddpm", "adm_upsampler", "adm_classifier")
SHAPE = (16, 16, 3)


def _family(name: str, **changes):
    """Returns (diffax model, state dict, reference arrays, record) of a fixture family."""
    with open(os.path.join(DATA, f"{name}.json")) as f:
        record = json.load(f)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in record["diffax"].items()}
    kwargs.update(changes)
    cls = classifier.NoisyClassifier if record["torch_class"] == "EncoderUNetModel" else unet.UNet
    state = fixture_state_dict(record["layout"], record["seed"], record["std"])
    reference = dict(np.load(os.path.join(DATA, f"{name}.npz")))
    return cls(**kwargs), state, reference, record


def _apply(model, params, reference):
    from diffax import super_resolution

    extra = {}
    if "low_res" in reference:
        extra["concat"] = super_resolution.upsample(reference["low_res"], SHAPE[0], "linear")
    y = reference["y"] if getattr(model, "num_classes", 0) else None
    return np.asarray(model.apply({"params": params}, reference["x"], reference["t"], y, **extra))


@pytest.mark.parametrize("name", FAMILIES)
def test_imported_weights_compute_what_openais_code_computes(name):
    model, state, reference, record = _family(name)
    params = openai_weights.convert_state_dict(state, model, SHAPE, origin=record["source"])
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype(np.float32)}
    out = _apply(model, params, reference)
    assert np.abs(reference["out"]).max() > 0.5  # Random weights everywhere: not a zero output.
    np.testing.assert_allclose(out, reference["out"], atol=1e-4, rtol=0)
    layout_count = sum(math.prod(shape) for _, shape in record["layout"])
    assert models.count_params(params) == layout_count


def test_the_attention_order_is_what_makes_a_legacy_checkpoint_right():
    # Same tensors, the other split of qkv: the output must differ, so the flag is honoured.
    model, state, reference, _ = _family("adm_legacy_order", use_new_attention_order=True)
    out = _apply(model, openai_weights.convert_state_dict(state, model, SHAPE), reference)
    assert np.abs(out - reference["out"]).max() > 1e-2


def test_improved_diffusion_refuses_the_new_attention_order():
    model, state, _, _ = _family("iddpm", use_new_attention_order=True)
    with pytest.raises(ValueError, match=r"set model\.unet\.use_new_attention_order=False"):
        openai_weights.convert_state_dict(state, model, SHAPE, origin="improved-diffusion")


def _refusal(name, state, source="tiny.npz", **changes):
    model, _, _, record = _family(name, **changes)
    with pytest.raises(ValueError) as error:
        openai_weights.convert_state_dict(state, model, SHAPE, source=source)
    message = str(error.value)
    assert message.startswith(f"{source} does not fit ") and "\n" not in message
    return message


def test_a_missing_tensor_is_named_with_its_config_field():
    _, state, _, _ = _family("adm_new_order")
    del state["output_blocks.1.1.qkv.weight"]
    message = _refusal("adm_new_order", state)
    assert "lacks 1 tensors: output_blocks.1.1.qkv.weight" in message
    assert "depend on model.unet.attention_resolutions" in message


def test_an_extra_tensor_is_named():
    _, state, _, _ = _family("adm_new_order")
    state["input_blocks.9.0.in_layers.0.weight"] = state["input_blocks.1.0.in_layers.0.weight"]
    message = _refusal("adm_new_order", state)
    assert "has 1 unexpected: input_blocks.9.0.in_layers.0.weight" in message
    assert "model.unet.num_res_blocks" in message


def test_a_label_table_without_the_null_class_names_null_class():
    # ADM's files have num_classes rows; diffax's default adds the null class's row.
    _, state, _, _ = _family("adm_new_order")
    message = _refusal("adm_new_order", state, null_class=True)
    assert "has 1 mis-shaped: label_emb.weight (10, 128) (expected (11, 128))" in message
    assert "model.unet.null_class" in message


def test_a_fixed_variance_model_names_the_learned_output_channels():
    _, state, _, _ = _family("adm_new_order")
    message = _refusal("adm_new_order", state, out_channels=3)
    assert "out.2.weight (6, 32, 3, 3) (expected (3, 32, 3, 3))" in message
    assert "diffusion.var_type" in message


def test_a_file_of_another_architecture_holds_none_of_the_tensors():
    _, state, _, _ = _family("adm_classifier")
    message = _refusal("adm_new_order", {f"model.{k}": v for k, v in state.items()})
    assert "holds none of its" in message


def test_modules_openais_upsamplers_lack_are_refused_by_their_config_field():
    model, state, _, _ = _family("adm_upsampler", level_cond=True)
    with pytest.raises(ValueError, match=r"no aug_level_embed/.*super_resolution\.level_cond"):
        openai_weights.convert_state_dict(state, model, SHAPE)


def _published_layouts():
    with gzip.open(os.path.join(DATA, "published_layouts.json.gz"), "rt") as f:
        return json.load(f)


PUBLISHED = sorted(
    name[:-3]
    for name in os.listdir(os.path.join(os.path.dirname(DATA), "..", "..", "configs", "published"))
    if name.startswith(("adm_", "iddpm_"))
)
# Same flags as the bedroom file (make_openai_fixture.PUBLISHED): not built again at full size.
SAME_AS = {"adm_lsun_cat": "adm_lsun_bedroom", "adm_lsun_horse": "adm_lsun_bedroom",
           "adm_lsun_horse_nodropout": "adm_lsun_bedroom"}  # fmt: skip


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_configs_expect_exactly_the_published_names_and_shapes(name):
    layouts = _published_layouts()
    layout = {k: tuple(shape) for k, shape in layouts[SAME_AS.get(name, name)]}
    config = importlib.import_module(f"configs.published.{name}").get_config()
    model = build.create_model(config)
    expected = openai_weights.expected_tensors(model, build.image_shape(config))
    assert {k: shape for k, (_, shape) in expected.items()} == layout
    # make_openai_fixture checked the live outputs at full size and that this count is the
    # original model's parameters().
    assert sum(math.prod(shape) for _, shape in expected.values()) == sum(
        math.prod(shape) for shape in layout.values()
    )
