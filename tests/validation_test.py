"""Tests of config validation: every bad field gets one sentence naming it and the choices."""

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


def _set(config, field, value):
    with config.unlocked():
        config.update_from_flattened_dict({field: value})


@pytest.mark.parametrize(
    "make", [digits, cifar10, imagenet64, tiny, digits_latent, imagenet256_ldm, imagenet256_dit_xl2]
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
        ("latent.scale", -1.0, r"latent\.scale=-1\.0 must be a number"),
        ("latent.scale", 0.0, r"latent\.scale=0 must be positive"),
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
