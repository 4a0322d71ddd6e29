"""Tests of config validation: every bad field gets one sentence naming it and the choices."""

import importlib
import os
import re

import hypothesis
import jax
import pytest
from hypothesis import strategies as st

from configs import (
    cifar10,
    digits,
    digits_autoencoder_gan,
    digits_classifier,
    digits_latent,
    digits_text,
    imagenet64,
    imagenet256_dit_xl2,
    imagenet256_ldm,
    tiny,
    tiny_text,
)
from configs.published import dit_xl2_256, dit_xl2_512
from diffax import build, generate, tasks, validation
from diffax.validation import ConfigError

# (field, invalid value) pairs; each must be rejected with a message naming the field.
INVALID = [
    ("data.image_size", 9),
    ("data.image_size", 0),
    ("data.num_levels", 1),
    ("data.num_channels", 2),
    ("model.unet.attention_resolutions", (3,)),
    ("model.unet.attention_resolutions", (16,)),
    ("model.unet.channel_mult", ()),
    ("model.unet.ch", -4),
    ("model.unet.ch", 48),
    ("model.unet.num_heads", 0),
    ("data.num_classes", -1),
    ("training.warmup_steps", -1),
    ("training.grad_clip", None),
    ("eval.ddim_eta", 2.0),
    ("model.dtype", "float8"),
    ("model.unet.dropout", 1.5),
    ("model.unet.num_head_channels", 12),
    ("diffusion.schedule", "sigmoid"),
    ("diffusion.mean_type", "score"),
    ("diffusion.var_type", "fixed"),
    ("diffusion.loss_type", "l1"),
    ("diffusion.timestep_sampler", "importance"),
    ("diffusion.num_timesteps", 0),
    ("training.batch_size", 12),
    ("training.batch_size", 0),
    ("training.grad_accum_steps", 3),
    ("training.learning_rate", 0.0),
    ("training.label_dropout", 1.0),
    ("training.ema_rates", (1.5,)),
    ("eval.sampler", "rk45"),
    ("eval.batch_size", 10),
    ("eval.sample_steps", 21),
    ("eval.sample_steps", 6),  # No DDIM stride over T=20 gives exactly 6 steps.
    ("eval.guidance_scale", -1.5),
    ("eval.classifier_scale", -1.0),
    ("mesh.fsdp", 3),
    ("mesh.data", 3),
    ("model.name", "transformer"),
    ("model.unet.channel_mult", (1, 0.7)),
    ("data.dataset", None),
    ("data.text_length", 40),  # Captions that no model reads (model.text_cond=False).
]

# Bad text-conditioning fields on the tiny text config; each message names the field.
INVALID_TEXT = [
    ("data.text_length", 10),  # Shorter than the longest digits caption.
    ("data.text_length", -1),
    ("model.text.width", 0),
    ("model.text.depth", -2),
    ("model.text.num_heads", 3),  # Does not divide text_width.
    ("model.text.positions", "rotary"),
    ("model.class_cond", True),
    ("model.name", "noisy_classifier"),
    ("diffusion.kind", "continuous"),
    ("data.dataset", "cifar10"),
]

# Issue 26's "before the first step" rules on configs/tiny.py: (field, value, what the sentence
# must also say: the accepted range or the other field involved).
NAN, INF = float("nan"), float("inf")
REFUSED = [
    ("training.adam_b1", 2.0, r"in \[0, 1\)"),
    ("training.adam_b2", -1.0, r"in \[0, 1\)"),
    ("training.adam_b1", 1.0, r"in \[0, 1\)"),
    ("training.weight_decay", -5.0, ">= 0"),
    ("training.weight_decay", INF, ">= 0"),
    ("training.learning_rate", INF, "finite number > 0"),
    ("training.learning_rate", NAN, "finite number > 0"),
    ("training.learning_rate", 0.0, "finite number > 0"),
    ("training.learning_rate", -1e-3, "finite number > 0"),
    ("training.grad_clip", -1.0, ">= 0"),
    ("training.grad_clip", INF, ">= 0"),
    ("training.grad_clip", NAN, ">= 0"),
    ("training.warmup_steps", 5, r"at most training\.num_steps=4"),  # tiny trains 4 steps.
    ("data.shuffle_buffer", 0, "positive integer"),
    ("data.shuffle_buffer", -1, "positive integer"),
    ("eval.num_bpd_examples", 0, "or -1 for the whole"),
    ("eval.num_bpd_examples", -5, "or -1 for the whole"),
    ("eval.num_reference_examples", 0, "or -1 for the whole"),
    ("eval.guidance_scale", INF, ">= -1"),
    ("eval.guidance_channels", -1, "non-negative integer"),
    ("eval.guidance_channels", 2, "exceeds the 1 channels of data.num_channels"),
    ("eval.classifier_scale", NAN, ">= 0"),
    ("eval.ode_tolerance", 0.0, r"in \(0, 1\]"),
    ("eval.ddim_eta", NAN, r"in \[0, 1\]"),
    ("training.label_dropout", NAN, r"in \[0, 1\)"),
    ("seed", 99999999999999999999, r"in \[0, 2\*\*32\)"),
    ("seed", 2**32, r"in \[0, 2\*\*32\)"),
    ("seed", -1, r"in \[0, 2\*\*32\)"),
    ("seed", True, r"in \[0, 2\*\*32\)"),
    # The digits: 17 levels, one channel of 8x8 pixels, splits train and test, 10 classes.
    ("data.num_levels", 256, r"data\.num_levels=17"),
    ("data.num_channels", 3, r"data\.num_channels=1"),
    ("data.image_size", 12, r"8, 16, 24.*eval\.quality_metrics=False"),
    ("data.eval_split", "validation", r"'train' and 'test'"),
    ("data.train_split", "train[:50%]+extra", r"'train' and 'test'"),
    ("data.eval_split", "test[", "TFDS split spec"),
    ("data.num_classes", 5, r"data\.num_classes=10"),
]

# Values at the edge of each new rule that stay accepted on configs/tiny.py.
ACCEPTED = [
    ("training.adam_b1", 0.0),
    ("training.adam_b2", 0.9999),
    ("training.weight_decay", 0.0),
    ("training.grad_clip", 0.0),
    ("training.warmup_steps", 4),  # Warms up over the whole run.
    ("data.shuffle_buffer", 1),
    ("eval.num_bpd_examples", -1),
    ("eval.num_bpd_examples", 1),
    ("seed", 2**32 - 1),
    ("data.eval_split", "train[:10%]+test"),
    ("data.num_classes", 12),
]


def _set(config, field, value):
    with config.unlocked():
        config.update_from_flattened_dict({field: value})


@pytest.mark.parametrize(
    "make",
    [
        digits,
        cifar10,
        imagenet64,
        tiny,
        digits_latent,
        imagenet256_ldm,
        imagenet256_dit_xl2,
        dit_xl2_256,
        dit_xl2_512,
    ],
)
def test_shipped_configs_are_valid(make):
    validation.validate_config(make.get_config(), device_count=8)


@pytest.mark.parametrize(
    ("sampler", "field", "value"),
    [
        ("dpmpp_3m", "eval.solver_order", 4),
        ("heun", "eval.solver_order", 2),
        ("unipc", "eval.sample_spacing", "cubic"),
        ("dpmpp_2m", "eval.sample_steps", 21),
    ],
)
def test_invalid_solver_settings_are_named(sampler, field, value):
    config = tiny.get_config()
    config.eval.sampler = sampler
    _set(config, field, value)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validation.validate_config(config, device_count=8)


@pytest.mark.parametrize(("field", "value"), INVALID)
def test_invalid_field_is_named(field, value):
    config = tiny.get_config()
    config.eval.sampler = "ddim"
    _set(config, field, value)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validation.validate_config(config, device_count=8)


@pytest.mark.parametrize(("field", "value"), INVALID_TEXT)
def test_invalid_text_field_is_named_in_one_sentence(field, value):
    config = tiny_text.get_config()
    _set(config, field, value)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as error:
        validation.validate_config(config, device_count=8)
    assert "\n" not in str(error.value)


def test_text_configs_are_valid_and_guidance_is_allowed_for_a_text_model():
    for make in (digits_text, tiny_text):
        validation.validate_config(make.get_config(), device_count=8)


def test_hybrid_loss_with_fixed_variance_is_refused_but_vlb_is_allowed():
    config = tiny.get_config()
    config.diffusion.var_type = "fixed_large"
    with pytest.raises(ConfigError, match="diffusion.loss_type='hybrid'.*var_type='fixed_large'"):
        validation.validate_config(config, device_count=8)
    config.diffusion.loss_type = "vlb"  # Ho et al.'s L_vlb with a fixed variance stays valid.
    validation.validate_config(config, device_count=8)


def test_guidance_on_an_unconditional_model_is_refused():
    config = tiny.get_config()
    config.model.class_cond = False
    config.eval.guidance_scale = 2.0
    with pytest.raises(ConfigError, match="eval.guidance_scale"):
        validation.validate_config(config, device_count=8)


FIELDS = sorted({f for f, _ in INVALID})
JUNK = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.none(),
    st.tuples(st.integers(-64, 64)),
    st.booleans(),
)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(field=st.sampled_from(FIELDS), value=JUNK)
def test_a_config_validation_accepts_builds_and_one_it_refuses_names_the_field(field, value):
    """Validation is complete: whatever it lets through, the builders can build."""
    config = tiny.get_config()
    try:
        _set(config, field, value)
    except (TypeError, ValueError):
        return  # ml_collections refuses a value of the wrong type when it is set: clear enough.
    try:
        validation.validate_config(config, device_count=8)
    except ConfigError as e:
        # One line naming a field: this one, or the one it conflicts with.
        message = str(e)
        assert re.search(r"\b(data|model|diffusion|training|eval|mesh|latent)\.\w+", message), (
            message
        )
        assert "\n" not in message
        return
    model = build.create_model(config)
    jax.eval_shape(lambda rng: tasks.init_params(rng, model, config), jax.random.PRNGKey(0))
    tasks.create_process(config)
    tasks.create_optimizer(config)
    generate.sampling_process(config, tasks.create_process(config))


def _latent_tiny():
    """The tiny config on 8x8x4 latents of an autoencoder workdir (validation reads no files)."""
    config = tiny.get_config()
    config.latent.autoencoder = "workdir"
    config.latent.autoencoder_workdir = "/nonexistent/autoencoder"
    config.data.num_channels = 4
    config.eval.clip_denoised = False
    return config


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("latent.autoencoder", "vqgan", r"latent\.autoencoder='vqgan' is not one of"),
        ("latent.scale", -1.0, r"latent\.scale=-1\.0 must be a finite number > 0"),
        ("latent.scale", 0.0, r"latent\.scale=0\.0 must be a finite number > 0"),
        ("latent.scale", float("inf"), r"latent\.scale=inf must be a finite number > 0"),
        ("diffusion.kind", "continuous", r"diffusion\.kind='continuous' on latents"),
        ("eval.clip_denoised", True, r"eval\.clip_denoised=True clips predicted latents"),
        ("eval.ode_bpd", True, r"eval\.ode_bpd=True dequantizes pixels"),
        ("model.name", "autoencoder_kl", r"model\.name='autoencoder_kl' is not one"),
        ("data.num_channels", 0, r"data\.num_channels=0 must be a positive integer"),
        ("latent.normalization", "minmax", r"latent\.normalization='minmax' is not one of"),
        ("training.disc_weight", 0.5, r"training\.disc_weight=0\.5 is an autoencoder's loss"),
    ],
)
def test_bad_latent_fields_are_named(field, value, message):
    config = _latent_tiny()
    validation.validate_config(config, device_count=8)  # 4 channels: latents.
    _set(config, field, value)
    with pytest.raises(ConfigError, match=message):
        validation.validate_config(config, device_count=8)


def test_latent_files_without_latent_autoencoder_and_4_pixel_channels_are_refused():
    config = tiny.get_config()
    config.latent.autoencoder_workdir = "/some/workdir"
    with pytest.raises(ConfigError, match=r"set latent\.autoencoder='workdir'"):
        validation.validate_config(config, device_count=8)
    config = tiny.get_config()
    config.data.num_channels = 4
    with pytest.raises(ConfigError, match=r"must be 1 or 3 \(other counts are latents"):
        validation.validate_config(config, device_count=8)


def test_sd_vae_latents_must_have_its_channels():
    config = imagenet256_dit_xl2.get_config()
    config.data.num_channels = 3
    with pytest.raises(ConfigError, match=r"the SD VAE's latents have 4 channels"):
        validation.validate_config(config, device_count=8)


def test_latent_scale_with_per_channel_normalization_is_refused():
    config = _latent_tiny()
    config.latent.normalization = "per_channel"
    validation.validate_config(config, device_count=8)
    config.latent.scale = 0.5
    with pytest.raises(ConfigError, match=r"latent\.scale is set with latent\.normalization="):
        validation.validate_config(config, device_count=8)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "model.discriminator.num_layers",
            4,
            r"model\.discriminator\.num_layers=4 leaves the discriminator no patch .* >= 48",
        ),
        ("training.disc_start", -1, r"training\.disc_start=-1 must be"),
        (
            "training.lpips_weights",
            "/no/lpips.npz",
            r"training\.lpips_weights='/no/lpips\.npz' is not",
        ),
    ],
)
def test_bad_autoencoder_gan_and_lpips_fields_are_named(field, value, message):
    config = digits_autoencoder_gan.get_config()
    config.training.perceptual_weight = 1.0
    validation.validate_config(config, device_count=8)
    _set(config, field, value)
    with pytest.raises(ConfigError, match=message):
        validation.validate_config(config, device_count=8)


def test_a_config_file_setting_an_old_flat_model_field_is_refused():
    """`config.model.ch = 64` in a file written before the split would add a field nothing reads."""
    config = digits.get_config()
    config.model.ch = 64
    config.model.text_width = 32
    with pytest.raises(
        ConfigError, match=r"model\.ch -> model\.unet\.ch, model\.text_width -> model\.text\.width"
    ):
        validation.validate_config(config, device_count=8)
    classifier = digits_classifier.get_config()
    classifier.model.num_heads = 2
    with pytest.raises(ConfigError, match=r"model\.num_heads -> model\.classifier\.num_heads"):
        validation.validate_config(classifier, device_count=8)


@pytest.mark.parametrize(("field", "value", "accepted"), REFUSED)
def test_a_value_no_step_could_use_is_refused_naming_the_field_and_the_range(
    field, value, accepted
):
    config = tiny.get_config()
    _set(config, field, value)
    with pytest.raises(ConfigError) as error:
        validation.validate_config(config, device_count=8)
    message = str(error.value)
    assert message.startswith(("config.seed" if field == "seed" else field) + "="), message
    assert re.search(accepted, message), message
    assert "\n" not in message and len(message) < 400, message


@pytest.mark.parametrize(("field", "value"), ACCEPTED)
def test_the_edge_of_each_rule_is_still_accepted(field, value):
    config = tiny.get_config()
    _set(config, field, value)
    validation.validate_config(config, device_count=8)


def test_the_largest_accepted_seed_makes_a_key_and_a_data_order():
    """[0, 2**32) is inside what every consumer of config.seed takes."""
    import numpy as np

    jax.random.PRNGKey(2**32 - 1)
    np.random.SeedSequence([2**32 - 1, 0]).generate_state(4)
    with pytest.raises(OverflowError):  # What --config.seed=99999999999999999999 used to hit.
        jax.random.PRNGKey(99999999999999999999)


def test_digits_in_latent_space_keep_only_their_levels_and_splits():
    """data.image_size and data.num_channels are the latents' there, not the digits'."""
    config = _latent_tiny()
    validation.validate_config(config, device_count=8)  # 4 channels, 8x8 latents.
    config.data.num_levels = 256
    with pytest.raises(ConfigError, match=r"data\.num_levels=17"):
        validation.validate_config(config, device_count=8)


def _image_folder_tiny(**fields):
    config = tiny.get_config()
    config.data.update(dataset="image_folder", folder="/data/faces", num_levels=256)
    config.data.update(num_classes=0, **fields)
    config.model.class_cond = False
    config.eval.guidance_scale = 0.0
    return config


def test_an_image_folder_is_refused_a_split_it_does_not_have():
    """Its only split is "train" (every file): the default eval_split 'test' stops the run before
    training, not after it; 'train' or a slice of it is accepted."""
    with pytest.raises(ConfigError) as error:
        validation.validate_config(_image_folder_tiny(), device_count=8)
    message = str(error.value)
    assert message.startswith("data.eval_split='test'"), message
    assert "one split 'train'" in message and "data.eval_split='train'" in message, message
    for split in ("train", "train[:100]", "train[90%:]"):
        validation.validate_config(_image_folder_tiny(eval_split=split), device_count=8)
    with pytest.raises(ConfigError, match=r"data\.train_split='validation'"):
        validation.validate_config(
            _image_folder_tiny(train_split="validation", eval_split="train"), device_count=8
        )


def _repaint_tiny(jump, resamplings=10):
    config = tiny.get_config()  # T = 20, sampled in eval.sample_steps = 10 steps.
    config.inpainting.update(repaint=True, repaint_jump=jump, repaint_resamplings=resamplings)
    return config


def test_a_repaint_jump_that_never_happens_is_refused():
    """The limit is the schedule's own: the longest accepted jump jumps, the next would not."""
    from diffax import inpainting

    with pytest.raises(ConfigError) as error:
        validation.validate_config(_repaint_tiny(1000), device_count=8)
    message = str(error.value)
    assert message.startswith("inpainting.repaint_jump=1000 must be at most 5 for 10"), message
    validation.validate_config(_repaint_tiny(5), device_count=8)
    assert inpainting.repaint_schedule(10, 5, 2)[:, 1].any()  # Jumps up.
    assert not inpainting.repaint_schedule(10, 6, 2)[:, 1].any()  # The plain chain.
    with pytest.raises(ConfigError, match="at most 5"):
        validation.validate_config(_repaint_tiny(6), device_count=8)
    validation.validate_config(_repaint_tiny(1000, resamplings=1), device_count=8)  # No jumps.
    with pytest.raises(ConfigError, match=r"inpainting\.repaint_resamplings=0 must be a positive"):
        validation.validate_config(_repaint_tiny(5, resamplings=0), device_count=8)


def test_samples_that_do_not_fit_in_host_memory_are_refused_naming_the_largest_that_fits(
    monkeypatch,
):
    config = tiny.get_config()  # 8x8x1 samples.
    per_sample = generate.host_bytes_per_sample((8, 8, 1))
    assert per_sample >= 8 * 8 * 1 * 4
    monkeypatch.setattr(generate, "available_host_bytes", lambda: 1000 * per_sample + 5)
    validation.check_num_samples(config, 1000)
    with pytest.raises(ConfigError) as error:
        validation.check_num_samples(config, 1001)
    assert str(error.value).startswith("--num_samples=1001 would hold"), error.value
    assert str(error.value).endswith("use at most --num_samples=1000."), error.value
    config.eval.num_samples = 10**9  # No flag: the field it came from is named.
    with pytest.raises(ConfigError, match=r"^eval\.num_samples=1000000000 .* at most "):
        validation.check_num_samples(config, None)
    monkeypatch.setattr(generate, "available_host_bytes", lambda: None)  # Unknown: no check.
    validation.check_num_samples(config, 10**9)


def test_the_available_host_memory_is_read():
    available = generate.available_host_bytes()
    assert available is None or 0 < available < 2**50


PUBLISHED_OPENAI = sorted(
    name[:-3]
    for name in os.listdir(os.path.join(os.path.dirname(__file__), "..", "configs", "published"))
    if name.startswith(("adm_", "iddpm_"))
)


@pytest.mark.parametrize("name", PUBLISHED_OPENAI)
def test_published_openai_configs_are_valid(name):
    config = importlib.import_module(f"configs.published.{name}").get_config()
    validation.validate_config(config, device_count=8)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("training.label_dropout", 0.1),
        ("eval.guidance_scale", 1.0),
        ("eval.ode_bpd", True),
        ("inpainting.repaint", True),
        ("eval.evaluators", ("bpd", "samples")),
    ],
)
def test_what_needs_the_null_class_is_refused_for_a_model_without_one(field, value):
    config = importlib.import_module("configs.published.adm_imagenet64_cond").get_config()
    _set(config, field, value)
    with pytest.raises(ConfigError, match=rf"^{re.escape(field)}=.*needs the null class"):
        validation.validate_config(config, device_count=8)
    config.model.unet.null_class = True  # The same request is fine with a null class.
    validation.validate_config(config, device_count=8)


def test_a_model_without_the_null_class_scores_bits_per_dim_given_the_label():
    config = importlib.import_module("configs.published.adm_imagenet64_cond").get_config()
    config.eval.evaluators = ()
    assert tasks.get(config).evaluators(config) == ("conditional_bpd", "samples")


@pytest.mark.parametrize(
    "field", ["super_resolution.sample_aug_level", "super_resolution.train_aug_max"]
)
def test_an_upsampler_without_the_level_input_refuses_an_augmentation_level(field):
    config = importlib.import_module("configs.published.adm_upsampler_64_256").get_config()
    _set(config, field, 0.1)
    with pytest.raises(
        ConfigError, match=rf"{re.escape(field)}=0\.1 needs super_resolution\.level_cond=True"
    ):
        validation.validate_config(config, device_count=8)
