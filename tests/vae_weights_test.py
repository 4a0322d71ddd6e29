"""Tests for diffax.vae_weights: diffusers AutoencoderKL weights against the reference's outputs.

The fixture in tests/data/vae_tiny was written by diffax/tools/make_vae_fixture.py with the
reference implementation (diffusers, torch, CPU); these tests need neither.
"""

import json
import os

import jax
import numpy as np
import pytest
import safetensors.numpy

from diffax import vae_weights
from diffax.models.autoencoder import AutoencoderKL

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "vae_tiny")
WEIGHTS = os.path.join(FIXTURE, "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def tiny():
    """(model, state dict as stored) of the fixture."""
    model = vae_weights.architecture_from_config_json(FIXTURE).model()
    return model, safetensors.numpy.load_file(WEIGHTS)


def _save(tmp_path, tensors) -> str:
    path = str(tmp_path / "weights.safetensors")
    safetensors.numpy.save_file(tensors, path)
    return path


def test_config_json_gives_the_architecture_and_scale():
    config = vae_weights.architecture_from_config_json(os.path.join(FIXTURE, "config.json"))
    assert config.block_out_channels == (8, 16, 16)
    assert (config.layers_per_block, config.norm_num_groups, config.z_channels) == (1, 4, 4)
    assert (config.in_channels, config.out_channels) == (3, 3)
    assert config.mid_block_attention and config.use_quant_conv and config.use_post_quant_conv
    assert config.scaling_factor == 0.25 and config.shift_factor == 0.0  # null -> no shift.
    assert config.model().downsample_factor == 4


def test_flax_model_matches_the_reference_outputs(tiny):
    model, _ = tiny
    params = vae_weights.load_autoencoder_params(WEIGHTS, model)
    reference = np.load(os.path.join(FIXTURE, "reference.npz"))

    @jax.jit
    def run(params, image, latents):
        variables = {"params": params}
        mean, logvar = model.apply(variables, image, method=model.encode)
        return mean, logvar, model.apply(variables, latents, method=model.decode)

    mean, logvar, decoded = run(params, reference["image"], reference["mean"])
    # The reference ran in float32 on the stored float16 values: only float32 rounding differs.
    np.testing.assert_allclose(mean, reference["mean"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(logvar, reference["logvar"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(decoded, reference["decoded"], atol=1e-4, rtol=0)
    assert np.abs(reference["decoded"]).max() > 0.5  # A non-trivial output.


def test_legacy_attention_names_and_1x1_conv_projections_load_the_same(tiny):
    model, tensors = tiny
    new = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for name, array in tensors.items():
        for current, old in new.items():
            if f".attentions.0.{current}." in name:
                name = name.replace(f".{current}.", f".{old}.")
                # Attention projections as 1x1 conv kernels [out, in, 1, 1].
                array = array[:, :, None, None] if array.ndim == 2 else array
        legacy[name] = array
    assert any("proj_attn" in name for name in legacy)
    expected = vae_weights.convert_state_dict(tensors, model)
    converted = vae_weights.convert_state_dict(legacy, model)
    jax.tree.map(np.testing.assert_array_equal, converted, expected)


def test_renamed_and_removed_tensors_are_refused_by_name(tiny, tmp_path):
    model, tensors = tiny
    tensors = dict(tensors)
    tensors["decoder.conv_out.weights"] = tensors.pop("decoder.conv_out.weight")
    del tensors["encoder.mid_block.attentions.0.to_k.bias"]
    path = _save(tmp_path, tensors)
    with pytest.raises(ValueError) as error:
        vae_weights.load_autoencoder_params(path, model)
    message = str(error.value)
    assert path in message
    assert "lacks 2 tensors: decoder.conv_out.weight, encoder.mid_block.attentions.0.to_k.bias" in (
        message
    )
    assert "has 1 unexpected: decoder.conv_out.weights" in message
    assert "\n" not in message and message.endswith(".")


def test_misshaped_tensor_is_refused_by_name(tiny, tmp_path):
    model, tensors = tiny
    tensors = dict(tensors)
    # A kernel in flax's HWIO layout instead of torch's OIHW.
    name = "encoder.down_blocks.1.resnets.0.conv1.weight"
    tensors[name] = np.ascontiguousarray(tensors[name].transpose(2, 3, 1, 0))
    path = _save(tmp_path, tensors)
    with pytest.raises(ValueError, match=rf"mis-shaped: {name} \(3, 3, 8, 16\) \(expected"):
        vae_weights.load_autoencoder_params(path, model)


def test_file_of_another_architecture_is_refused(tiny, tmp_path):
    model, _ = tiny
    path = _save(
        tmp_path, {"fc1.weight": np.zeros((4, 3), np.float32), "fc1.bias": np.zeros(4, np.float32)}
    )
    with pytest.raises(ValueError, match="holds none of its 152 tensors") as error:
        vae_weights.load_autoencoder_params(path, model)
    assert path in str(error.value) and "fc1.bias, fc1.weight" in str(error.value)


def test_weights_of_a_wider_model_are_refused(tiny):
    _, tensors = tiny
    wider = AutoencoderKL(block_out_channels=(8, 32, 32), layers_per_block=1, norm_num_groups=4)
    with pytest.raises(ValueError, match="mis-shaped"):
        vae_weights.convert_state_dict(tensors, wider)


def test_config_of_another_class_is_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"_class_name": "AutoencoderTiny", "act_fn": "relu"}))
    with pytest.raises(ValueError, match="AutoencoderTiny.*act_fn is 'relu'"):
        vae_weights.architecture_from_config_json(str(path))


def test_stable_diffusion_layout_matches_the_reference_names_and_shapes():
    # {name: torch shape} of the reference AutoencoderKL at Stable Diffusion's size.
    with open(os.path.join(FIXTURE, "sd_layout.json")) as f:
        reference = {name: tuple(shape) for name, shape in json.load(f).items()}
    expected = vae_weights.expected_tensors(AutoencoderKL())  # SD: (128, 256, 512, 512), f = 8.
    assert {name: shape for name, (_, shape) in expected.items()} == reference
    assert sum(int(np.prod(shape)) for shape in reference.values()) == 83_653_863


def test_diffusers_name_of_flax_paths():
    path = ("encoder", "down_blocks_0", "resnets_1", "conv_shortcut", "kernel")
    assert (
        vae_weights.diffusers_name(path) == "encoder.down_blocks.0.resnets.1.conv_shortcut.weight"
    )
    path = ("decoder", "mid_block", "attentions_0", "to_out", "bias")
    assert vae_weights.diffusers_name(path) == "decoder.mid_block.attentions.0.to_out.0.bias"
    assert vae_weights.diffusers_name(("quant_conv", "kernel")) == "quant_conv.weight"
