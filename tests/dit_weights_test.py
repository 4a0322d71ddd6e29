"""Tests of diffax.dit_weights and diffax.weight_files: Meta's DiT state dicts in diffax's DiT.

The fixture (tests/data/dit_tiny, written by `python -m diffax.tools.make_dit_fixture` from
facebookresearch/DiT's own models.py) is a tiny DiT with every parameter random and its output on
fixed inputs; `dit_xl2_layout.json` lists the names and shapes of DiT-XL/2's state dict.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import dit_weights, models, weight_files
from diffax.models import dit

DATA = os.path.join(os.path.dirname(__file__), "data", "dit_tiny")


def _tiny():
    with open(os.path.join(DATA, "config.json")) as f:
        arguments = json.load(f)
    model = dit.DiT(
        out_channels=2 * arguments["in_channels"],
        patch_size=arguments["patch_size"],
        hidden_size=arguments["hidden_size"],
        depth=arguments["depth"],
        num_heads=arguments["num_heads"],
        mlp_ratio=arguments["mlp_ratio"],
        num_classes=arguments["num_classes"],
    )
    size, channels = arguments["input_size"], arguments["in_channels"]
    return model, (size, size, channels)


def _state_dict():
    return weight_files.read_state_dict(os.path.join(DATA, "dit.npz"))


def test_imported_tiny_dit_computes_what_dits_own_code_computes():
    model, shape = _tiny()
    params = dit_weights.convert_state_dict(_state_dict(), model, shape)
    reference = np.load(os.path.join(DATA, "reference.npz"))
    out = model.apply({"params": params}, reference["x"], reference["t"], reference["y"])
    assert np.abs(reference["out"]).max() > 0.1  # Random weights everywhere: not a zero output.
    np.testing.assert_allclose(np.asarray(out), reference["out"], atol=1e-4, rtol=0)


def test_dit_xl2_names_shapes_and_parameter_count_match_the_original():
    # DiT-XL/2 on 256x256 ImageNet: 32x32x4 latents, 1000 classes, learned sigma (Table 1: 675M).
    model = dit.DiT(
        out_channels=8, patch_size=2, hidden_size=1152, depth=28, num_heads=16, num_classes=1000
    )
    expected = dit_weights.expected_tensors(model, (32, 32, 4))
    with open(os.path.join(DATA, "dit_xl2_layout.json")) as f:
        layout = {name: tuple(shape) for name, shape in json.load(f).items()}
    pos_embed = layout.pop(dit_weights.POS_EMBED)
    assert {name: shape for name, (_, shape) in expected.items()} == layout
    shapes = jax.eval_shape(
        model.init,
        jax.random.PRNGKey(0),
        jnp.zeros((1, 32, 32, 4)),
        jnp.zeros((1,), jnp.int32),
        jnp.zeros((1,), jnp.int32),
    )["params"]
    # make_dit_fixture --full_size printed 675,129,632 for DiT's model.parameters(), which counts
    # the fixed pos_embed [1, 256, 1152]; diffax computes that code instead of storing it.
    assert models.count_params(shapes) == 675_129_632 - int(np.prod(pos_embed))


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ("missing", "lacks 1 tensors: blocks.1.mlp.fc2.bias"),
        ("extra", "has 1 unexpected: blocks.2.attn.qkv.weight"),
        ("shape", "has 1 mis-shaped: t_embedder.mlp.0.weight (32, 128) (expected (32, 256))"),
        ("everything", "holds none of its 31 tensors"),
    ],
)
def test_a_state_dict_that_does_not_fit_gets_one_sentence(change, said):
    model, shape = _tiny()
    state = _state_dict()
    if change == "missing":
        del state["blocks.1.mlp.fc2.bias"]
    elif change == "extra":
        state["blocks.2.attn.qkv.weight"] = state["blocks.1.attn.qkv.weight"]
    elif change == "shape":
        state["t_embedder.mlp.0.weight"] = state["t_embedder.mlp.0.weight"][:, :128]
    else:
        state = {f"module.{name}": value for name, value in state.items()}
    with pytest.raises(ValueError) as error:
        dit_weights.convert_state_dict(state, model, shape, source="dit.npz")
    message = str(error.value)
    assert message.startswith("dit.npz does not fit DiT(hidden_size=32, depth=2")
    assert said in message and "\n" not in message


def test_a_checkpoint_for_another_image_size_is_refused_by_its_position_code():
    model, _ = _tiny()
    state = _state_dict()
    with pytest.raises(ValueError, match=r"pos_embed .* is not DiT's 2-D sine-cosine embedding"):
        # Same tensors, but the model is asked for 16x16 inputs: a 64-token grid.
        dit_weights.convert_state_dict(state, model, (16, 16, 4), source="dit.npz")


def test_modules_dit_checkpoints_lack_have_no_name():
    assert dit_weights.dit_name(("block_3", "attn", "qkv", "kernel")) == "blocks.3.attn.qkv.weight"
    with pytest.raises(KeyError):
        dit_weights.dit_name(("block_0", "cross_attn", "q", "kernel"))
    with pytest.raises(KeyError):
        dit_weights.dit_name(("aug_level_embed", "dense", "kernel"))


def test_state_dict_files_read_the_same_from_npz_and_safetensors(tmp_path):
    import safetensors.numpy

    state = _state_dict()
    path = str(tmp_path / "dit.safetensors")
    safetensors.numpy.save_file(state, path)
    again = weight_files.read_state_dict(path)
    assert again.keys() == state.keys()
    for name in state:
        np.testing.assert_array_equal(again[name], state[name])
        assert again[name].dtype == state[name].dtype


def test_reading_a_file_that_is_not_a_state_dict(tmp_path):
    with pytest.raises(FileNotFoundError):
        weight_files.read_state_dict(str(tmp_path / "none.pt"))
    other = tmp_path / "weights.h5"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match=r"weights\.h5: a state dict file must end in \.pt"):
        weight_files.read_state_dict(str(other))
    assert weight_files.unwrap({"ema": {"a": 1}, "model": {"a": 2}}, "x") == {"a": 1}
    with pytest.raises(ValueError, match="x holds a list, not a state dict"):
        weight_files.unwrap([1], "x")


def test_a_torch_checkpoint_nested_under_ema_reads_as_its_state_dict(tmp_path):
    """Skipped without torch, on purpose: only .pt files need it (the optional 'convert' extra),
    CI installs diffax without it, and the .npz/.safetensors paths above are tested everywhere."""
    torch = pytest.importorskip("torch", reason="reading .pt files needs the 'convert' extra")
    state = _state_dict()
    path = str(tmp_path / "0100000.pt")
    torch.save(
        {
            "model": {k: torch.zeros(1) for k in state},
            "ema": {k: torch.from_numpy(v) for k, v in state.items()},
        },
        path,
    )
    again = weight_files.read_state_dict(path)
    for name in state:
        np.testing.assert_array_equal(again[name], state[name])
