"""Sample files say what made them and never overwrite each other; non-finite ones are refused."""

import os

import numpy as np
import pytest

from configs import digits, tiny
from diffax import sample_files


def test_the_name_says_what_made_the_samples():
    config = tiny.get_config()  # DDPM respaced to 10 steps, guidance 1 (the digits').
    assert sample_files.sample_name(config, "samples", 4, 16) == "samples_00000004_ddpm10_g1_n16"
    config.eval.update(sampler="ddim", sample_steps=0, guidance_scale=0.0)
    assert sample_files.sample_name(config, "samples", 4, 2) == "samples_00000004_ddim20_n2"
    config.eval.update(guidance_scale=2.5, classifier_scale=1.0)
    named = sample_files.sample_name(config, "inpainting", 7, 3, prompt="a three")
    assert named.startswith("inpainting_00000007_ddim20_g2.5_c1_p") and named.endswith("_n3")
    # Every prompt, the empty one too, gets its own name.
    prompts = ["a three", "a four", "", None]
    names = {sample_files.sample_name(config, "samples", 4, 2, prompt=p) for p in prompts}
    assert len(names) == 4


def test_a_taken_name_gets_the_next_free_number(tmp_path):
    workdir = str(tmp_path)
    name = "samples_00000004_ddpm10_g1_n16"
    assert sample_files.unused_name(workdir, name) == name
    for stem in (name, name + "_chain"):
        open(os.path.join(workdir, stem + ".png"), "w").close()
    assert sample_files.unused_name(workdir, name) == name + "_2"
    open(os.path.join(workdir, name + "_2.npz"), "w").close()
    assert sample_files.unused_name(workdir, name) == name + "_3"
    assert sample_files.unused_name(workdir, name + "0") == name + "0"  # Another count.


def test_saved_samples_keep_their_prompt_and_earlier_files(tmp_path):
    config = digits.get_config()
    samples = np.zeros((2, 8, 8, 1), np.float32)
    workdir = str(tmp_path)
    first = sample_files.save_samples(config, workdir, "a", samples, prompt="a handwritten three")
    assert str(np.load(os.path.join(workdir, "a.npz"))["prompt"]) == "a handwritten three"
    assert "prompt" not in np.load(
        sample_files.save_samples(config, workdir, "b", samples)[:-4] + ".npz"
    )
    assert os.path.exists(first)


@pytest.mark.parametrize(
    ("fields", "blamed"),
    [
        ({"guidance_scale": 1e30}, "lower eval.guidance_scale"),
        ({"guidance_scale": 0.0}, "try another eval.sampler or more eval.sample_steps"),
    ],
)
def test_non_finite_samples_name_the_sampling_settings(fields, blamed):
    config = tiny.get_config()
    config.eval.update(fields)
    samples = np.zeros((2, 8, 8, 1), np.float32)
    sample_files.check_finite(config.eval, samples, "--mode=sample")  # Finite: nothing to say.
    samples[1, 3, 3, 0] = np.nan
    with pytest.raises(FloatingPointError) as error:
        sample_files.check_finite(config.eval, samples, "--mode=sample")
    message = str(error.value)
    assert message.startswith("--mode=sample gave non-finite images with eval.sampler='ddpm'")
    assert blamed in message and message.endswith("Nothing was written.")
    assert "\n" not in message
