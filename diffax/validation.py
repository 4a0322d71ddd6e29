"""Config validation before anything compiles: one clear sentence per mistake.

The accepted values come from the modules that use them (diffusion.MEAN_TYPES, schedules.
BETA_SCHEDULES, unet.reachable_resolutions, layers.attention_heads, sharding.check_mesh, ...), so
a new option is accepted here as soon as its module offers it.
"""

import jax
import ml_collections

from diffax import (
    build,
    config_checks,
    diffusion,
    generate,
    schedules,
    sharding,
    solvers,
    tasks,
    timestep_sampler,
)
from diffax.config_checks import ConfigError
from diffax.config_checks import choice as _choice
from diffax.config_checks import count_or_all as _count_or_all
from diffax.config_checks import number as _number
from diffax.config_checks import positive_int as _positive_int
from diffax.datasets import captions, digits, image_folder

DTYPES = ("float32", "bfloat16", "float16")
# config.seed seeds jax.random.PRNGKey (which takes [-2**63, 2**63)), NumPy's SeedSequence of the
# data order and captions (non-negative only) and TensorFlow's int64 seeds: [0, 2**32) suits all.
SEED_LIMIT = 2**32
# model.text.positions: the text encoder's position code (models.text_encoder.TextEncoder).
TEXT_POSITIONS = ("learned", "none", "words")


def _validate_autoencoder_loss(config: ml_collections.ConfigDict) -> None:
    """Checks the GAN and perceptual fields of training (autoencoder runs only when nonzero)."""
    training = config.training
    _number(training.disc_weight, "training.disc_weight", 0.0, float("inf"))
    _positive_int(training.disc_start, "training.disc_start", allow_zero=True)
    _number(training.perceptual_weight, "training.perceptual_weight", 0.0, float("inf"))
    if not isinstance(training.lpips_weights, str):
        raise ConfigError(
            f"training.lpips_weights={training.lpips_weights!r} must be a path (a string)."
        )


def _validate_model(config: ml_collections.ConfigDict) -> None:
    m, data = config.model, config.data
    _choice(m.name, "model.name", tuple(build.MODELS))
    config_checks.check_no_moved_fields(m, m.name)
    build.check_backbone(config)
    _choice(m.dtype, "model.dtype", DTYPES)
    if not isinstance(m.class_cond, bool):
        raise ConfigError(f"model.class_cond={m.class_cond!r} must be True or False.")
    if m.class_cond and data.num_classes < 1:
        raise ConfigError(
            f"model.class_cond=True needs data.num_classes >= 1 (got {data.num_classes})."
        )


def _validate_text(config: ml_collections.ConfigDict) -> None:
    """Checks the text-conditioning fields: model.text_cond, model.text and data.text_length."""
    m, data = config.model, config.data
    text_cond, length = m.get("text_cond", False), data.get("text_length", 0)
    if not isinstance(text_cond, bool):
        raise ConfigError(f"model.text_cond={text_cond!r} must be True or False.")
    _positive_int(length, "data.text_length", allow_zero=True)
    if not text_cond:
        if length:
            raise ConfigError(
                f"data.text_length={length} writes captions that no model reads: set "
                "model.text_cond=True, or data.text_length=0."
            )
        if data.get("text_embeddings"):
            raise ConfigError(
                f"data.text_embeddings={data.text_embeddings!r} is set but model.text_cond=False: "
                "set model.text_cond=True to condition on them, or data.text_embeddings=''."
            )
        return
    _choice(m.name, "model.name (with model.text_cond=True)", build.TEXT_BACKBONES)
    if m.class_cond:
        raise ConfigError(
            "model.text_cond=True conditions on captions, not labels: set model.class_cond=False."
        )
    if config.diffusion.kind != "discrete":
        raise ConfigError(
            f"model.text_cond=True trains with diffusion.kind='discrete' only, got "
            f"{config.diffusion.kind!r}."
        )
    _positive_int(m.text.width, "model.text.width")
    if build.has_stored_embeddings(config):
        _validate_stored_embeddings(config)
        return
    if data.dataset != "digits" or data.num_classes != len(captions.DIGIT_WORDS):
        raise ConfigError(
            f"model.text_cond=True needs captions: only data.dataset='digits' with "
            f"data.num_classes=10 has them (written from the labels), got {data.dataset!r}."
        )
    needed = captions.max_caption_bytes() + 1
    if length < needed:
        raise ConfigError(
            f"data.text_length={length} must be at least {needed}: the longest digits caption "
            f"is {needed - 1} UTF-8 bytes plus the BOS token."
        )
    text = m.text
    _positive_int(text.width, "model.text.width")
    _positive_int(text.depth, "model.text.depth")
    _positive_int(text.num_heads, "model.text.num_heads")
    _choice(text.positions, "model.text.positions", TEXT_POSITIONS)
    if not isinstance(text.pool, bool):
        raise ConfigError(f"model.text.pool={text.pool!r} must be True or False.")
    if text.width % text.num_heads:
        raise ConfigError(
            f"model.text.num_heads={text.num_heads} must divide model.text.width={text.width}."
        )


def _validate_stored_embeddings(config: ml_collections.ConfigDict) -> None:
    """Checks data.text_embeddings: the pattern, what it combines with, and the files' headers."""
    from diffax import text_embeddings

    data = config.data
    pattern = data.text_embeddings
    if not isinstance(pattern, str) or "{split}" not in pattern:
        raise ConfigError(
            f"data.text_embeddings={pattern!r} must be a path holding {{split}}, e.g. "
            "'/data/emb/{split}.npz' (one .npz per split)."
        )
    if data.text_length < 1:
        raise ConfigError(
            "data.text_embeddings needs data.text_length set to the files' token count L."
        )
    if build.is_latent(config):
        raise ConfigError(
            "data.text_embeddings with latent.autoencoder (stored embeddings on latents) is not "
            "built yet; use diffax's text encoder there (data.text_embeddings='')."
        )
    if data.get("skip_bad_images"):
        raise ConfigError(
            "data.text_embeddings with data.skip_bad_images=True: a skipped image would shift "
            "every later example off its embedding row; set data.skip_bad_images=False."
        )
    try:
        text_embeddings.check(config.data, config.model.text.width)
    except (ValueError, OSError) as e:
        raise ConfigError(str(e)) from None


def _validate_diffusion(config: ml_collections.ConfigDict) -> None:
    d = config.diffusion
    _choice(d.schedule, "diffusion.schedule", schedules.BETA_SCHEDULES)
    _positive_int(d.num_timesteps, "diffusion.num_timesteps")
    _choice(d.mean_type, "diffusion.mean_type", diffusion.MEAN_TYPES)
    _choice(d.var_type, "diffusion.var_type", diffusion.VAR_TYPES)
    _choice(d.loss_type, "diffusion.loss_type", (*diffusion.LOSS_TYPES, *diffusion.LOSS_ALIASES))
    _choice(d.timestep_sampler, "diffusion.timestep_sampler", timestep_sampler.TIMESTEP_SAMPLERS)
    _choice(d.kind, "diffusion.kind", ("discrete", "continuous"))
    loss_type = diffusion.LOSS_ALIASES.get(d.loss_type, d.loss_type)
    if loss_type == "rescaled_mse" and d.var_type not in diffusion.LEARNED_VAR_TYPES:
        raise ConfigError(
            f"diffusion.loss_type={d.loss_type!r} with diffusion.var_type={d.var_type!r}: the "
            "hybrid loss's bound term trains only a learned variance; use var_type 'learned' or "
            "'learned_range', or loss_type 'mse'."
        )


def _validate_training(config: ml_collections.ConfigDict, device_count: int) -> None:
    training = config.training
    for field in (
        "batch_size",
        "num_steps",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "grad_accum_steps",
        "max_consecutive_skips",
    ):
        _positive_int(training[field], f"training.{field}")
    _positive_int(training.sample_every, "training.sample_every", allow_zero=True)
    if training.batch_size % device_count:
        raise ConfigError(
            f"training.batch_size={training.batch_size} must be divisible by the {device_count} "
            "devices."
        )
    if training.batch_size % (training.grad_accum_steps * device_count):
        raise ConfigError(
            f"training.batch_size={training.batch_size} must be divisible by "
            f"training.grad_accum_steps={training.grad_accum_steps} times the {device_count} "
            "devices."
        )
    _number(training.learning_rate, "training.learning_rate", 0.0, low_open=True)
    _number(training.label_dropout, "training.label_dropout", 0.0, 1.0, high_open=True)
    _number(training.grad_clip, "training.grad_clip", 0.0)  # 0 turns clipping off.
    _number(training.weight_decay, "training.weight_decay", 0.0)
    for field in ("adam_b1", "adam_b2"):  # Moment decays: 1 would never forget, > 1 diverges.
        _number(training[field], f"training.{field}", 0.0, 1.0, high_open=True)
    _positive_int(training.warmup_steps, "training.warmup_steps", allow_zero=True)
    # Update i (from 0) takes learning_rate * i / warmup_steps (build.learning_rate_schedule):
    # a warmup longer than the run never reaches the peak rate.
    if training.warmup_steps > training.num_steps:
        raise ConfigError(
            f"training.warmup_steps={training.warmup_steps} must be at most training.num_steps="
            f"{training.num_steps}: a longer warmup would never reach the peak "
            "training.learning_rate."
        )
    rates = training.ema_rates
    ok = isinstance(rates, (tuple, list)) and len(rates) > 0
    ok = ok and all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in rates)
    if not ok or not all(0.0 <= r < 1.0 for r in rates):
        raise ConfigError(f"training.ema_rates={rates!r} must be one or more rates in [0, 1).")


def _validate_eval(config: ml_collections.ConfigDict, device_count: int) -> None:
    ev = config.eval
    _positive_int(ev.batch_size, "eval.batch_size")
    if ev.batch_size % device_count:
        raise ConfigError(
            f"eval.batch_size={ev.batch_size} must be divisible by the {device_count} devices."
        )
    _positive_int(ev.num_samples, "eval.num_samples")
    _count_or_all(ev.num_bpd_examples, "eval.num_bpd_examples", "the whole data.eval_split")
    _count_or_all(
        ev.num_reference_examples, "eval.num_reference_examples", "the whole data.eval_split"
    )
    _choice(ev.sampler, "eval.sampler", generate.SAMPLERS)
    _positive_int(ev.sample_steps, "eval.sample_steps", allow_zero=True)
    _positive_int(ev.bpd_t_samples, "eval.bpd_t_samples")
    if not isinstance(ev.ode_bpd, bool):
        raise ConfigError(f"eval.ode_bpd={ev.ode_bpd!r} must be True or False.")
    _choice(ev.ode_divergence, "eval.ode_divergence", ("exact", "hutchinson"))
    _number(ev.ode_tolerance, "eval.ode_tolerance", 0.0, 1.0, low_open=True)  # rtol = atol.
    _positive_int(ev.solver_order, "eval.solver_order", allow_zero=True)
    _positive_int(ev.chain_frames, "eval.chain_frames", allow_zero=True)
    _positive_int(ev.chain_samples, "eval.chain_samples")
    if ev.solver_order:
        orders = solvers.SOLVER_ORDERS.get(ev.sampler)
        if orders is None:
            raise ConfigError(
                f"eval.solver_order={ev.solver_order} applies only to eval.sampler in "
                f"{', '.join(solvers.SOLVER_ORDERS)}, not {ev.sampler!r}; use 0."
            )
        if ev.solver_order not in orders:
            raise ConfigError(
                f"eval.solver_order={ev.solver_order} is not one of "
                f"{', '.join(map(str, orders))} for eval.sampler={ev.sampler!r}."
            )
    _number(ev.guidance_scale, "eval.guidance_scale", -1.0, float("inf"))
    _positive_int(ev.guidance_channels, "eval.guidance_channels", allow_zero=True)
    if ev.guidance_channels > config.data.num_channels:
        raise ConfigError(
            f"eval.guidance_channels={ev.guidance_channels} exceeds the "
            f"{config.data.num_channels} channels of data.num_channels; use 0 (all) or fewer."
        )
    _number(ev.classifier_scale, "eval.classifier_scale", 0.0, float("inf"))
    if ev.classifier_scale:
        if not ev.classifier_workdir:
            raise ConfigError(
                f"eval.classifier_scale={ev.classifier_scale} needs eval.classifier_workdir, the "
                "workdir of a trained noisy classifier (configs/digits_classifier.py)."
            )
        if config.data.num_classes < 1:
            raise ConfigError(
                f"eval.classifier_scale={ev.classifier_scale} needs labelled data "
                "(data.num_classes >= 1) to guide towards."
            )
    _number(ev.ddim_eta, "eval.ddim_eta", 0.0, 1.0)
    if ev.guidance_scale and not (config.model.class_cond or build.is_text_conditioned(config)):
        raise ConfigError(
            f"eval.guidance_scale={ev.guidance_scale} needs a class-conditional model "
            "(model.class_cond=True) or a text-conditioned one (model.text_cond=True); use 0 for "
            "an unconditional model."
        )


def _validate_data(config: ml_collections.ConfigDict) -> None:
    data = config.data
    if not data.dataset:
        raise ConfigError(
            "data.dataset is unset: give a prepared TFDS data set name (e.g. cifar10), "
            "'digits' or 'image_folder'."
        )
    num_levels = data.num_levels
    if not isinstance(num_levels, int) or isinstance(num_levels, bool) or num_levels < 2:
        raise ConfigError(f"data.num_levels={data.num_levels!r} must be an integer >= 2.")
    if build.is_latent(config):
        _positive_int(data.num_channels, "data.num_channels")  # The latents' channels.
    elif data.num_channels not in (1, 3):
        raise ConfigError(
            f"data.num_channels={data.num_channels!r} must be 1 or 3 (other counts are latents: "
            "set latent.autoencoder)."
        )
    if data.dataset == "image_folder" and not data.folder:
        raise ConfigError("data.dataset='image_folder' needs data.folder, the folder to read.")
    _positive_int(data.get("cache_mib", 0), "data.cache_mib", allow_zero=True)
    _positive_int(data.shuffle_buffer, "data.shuffle_buffer")
    _positive_int(data.image_size, "data.image_size")
    _positive_int(data.num_classes, "data.num_classes", allow_zero=True)
    try:  # What the data set itself can give: its splits, levels, channels and sizes.
        if data.dataset == "digits":
            digits.check_config(data, build.is_latent(config), config.eval.quality_metrics)
        elif data.dataset == "image_folder":
            image_folder.check_config(data)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _validate_super_resolution(config: ml_collections.ConfigDict) -> None:
    sr = config.super_resolution
    _positive_int(sr.low_res_size, "super_resolution.low_res_size", allow_zero=True)
    if not sr.low_res_size:
        if sr.base_workdir:
            raise ConfigError(
                "super_resolution.base_workdir is set but super_resolution.low_res_size=0: only "
                "an upsampler (low_res_size > 0) samples a cascade."
            )
        return
    from diffax import super_resolution

    size = config.data.image_size
    if sr.low_res_size >= size or size % sr.low_res_size:
        raise ConfigError(
            f"super_resolution.low_res_size={sr.low_res_size} must be smaller than "
            f"data.image_size={size} and divide it."
        )
    if config.model.name not in ("unet", "dit") or config.diffusion.kind != "discrete":
        raise ConfigError(
            "super_resolution.low_res_size > 0 needs a discrete-time denoiser: model.name 'unet' "
            f"or 'dit' with diffusion.kind='discrete' (got {config.model.name!r}, "
            f"{config.diffusion.kind!r})."
        )
    if config.model.get("text_cond"):
        raise ConfigError(
            "super_resolution.low_res_size > 0 with model.text_cond=True is not built yet."
        )
    if config.eval.ode_bpd:
        raise ConfigError(
            "eval.ode_bpd=True is not available for a super-resolution model "
            "(super_resolution.low_res_size > 0): its ODE would need the low-resolution input."
        )
    _choice(
        sr.upsample_method, "super_resolution.upsample_method", super_resolution.UPSAMPLE_METHODS
    )
    _number(sr.train_aug_max, "super_resolution.train_aug_max", 0.0, 1.0)
    _number(sr.sample_aug_level, "super_resolution.sample_aug_level", 0.0, 1.0)
    level_cond = sr.get("level_cond", True)
    if not isinstance(level_cond, bool):
        raise ConfigError(f"super_resolution.level_cond={level_cond!r} must be True or False.")
    for field in ("train_aug_max", "sample_aug_level"):
        if not level_cond and sr[field]:
            raise ConfigError(
                f"super_resolution.{field}={sr[field]} needs super_resolution.level_cond=True: "
                "a model without the level as an input cannot be told the augmentation; use 0."
            )


def _validate_inpainting(config: ml_collections.ConfigDict) -> None:
    from diffax import inpainting

    ip = config.inpainting
    for field in ("mask_cond", "repaint"):
        if not isinstance(ip[field], bool):
            raise ConfigError(f"inpainting.{field}={ip[field]!r} must be True or False.")
    _choice(ip.eval_mask, "inpainting.eval_mask", inpainting.FIXED_MASKS)
    _positive_int(ip.repaint_jump, "inpainting.repaint_jump")
    _positive_int(ip.repaint_resamplings, "inpainting.repaint_resamplings")
    kinds = tuple(ip.train_masks) if isinstance(ip.train_masks, tuple | list) else ()
    if not kinds or any(k not in inpainting.MASK_KINDS for k in kinds):
        raise ConfigError(
            f"inpainting.train_masks={ip.train_masks!r} must be a tuple of one or more of "
            f"{', '.join(map(repr, inpainting.MASK_KINDS))}."
        )
    if not (ip.mask_cond or ip.repaint):
        return
    field = "inpainting.mask_cond" if ip.mask_cond else "inpainting.repaint"
    if config.model.name not in ("unet", "dit") or config.diffusion.kind != "discrete":
        raise ConfigError(
            f"{field}=True needs a discrete-time denoiser: model.name 'unet' or 'dit' with "
            f"diffusion.kind='discrete' (got {config.model.name!r}, {config.diffusion.kind!r})."
        )
    if config.super_resolution.low_res_size:
        raise ConfigError(f"{field}=True and super_resolution.low_res_size > 0 do not combine.")
    if config.model.get("text_cond"):
        raise ConfigError(f"{field}=True with model.text_cond=True is not built yet.")
    if ip.mask_cond and ip.repaint:
        raise ConfigError(
            "inpainting.repaint=True is for models without mask conditioning; this one has "
            "inpainting.mask_cond=True and inpaints by itself."
        )
    if ip.mask_cond and config.eval.ode_bpd:
        raise ConfigError(
            "eval.ode_bpd=True is not available for a mask-conditioned model "
            "(inpainting.mask_cond=True): its ODE would need the mask input."
        )
    steps = config.eval.sample_steps or config.diffusion.num_timesteps  # RePaint's chain.
    longest = inpainting.max_jump_length(steps)
    if ip.repaint and ip.repaint_resamplings > 1 and ip.repaint_jump > longest:
        raise ConfigError(
            f"inpainting.repaint_jump={ip.repaint_jump} must be at most {longest} for "
            f"{steps} sampling steps (eval.sample_steps, or diffusion.num_timesteps when 0): "
            "RePaint jumps back from every j-th step and a longer jump never happens "
            "(inpainting.repaint_resamplings=1 samples without jumps)."
        )


def _validate_latent(config: ml_collections.ConfigDict) -> None:
    latent = config.get("latent")
    if latent is None:
        return
    _choice(latent.autoencoder, "latent.autoencoder", build.LATENT_AUTOENCODERS)
    if not latent.autoencoder:
        for field, kind in (("autoencoder_workdir", "workdir"), ("sd_vae_weights", "sd_vae")):
            if latent.get(field):
                raise ConfigError(
                    f"latent.{field} is set but latent.autoencoder is unset: set "
                    f"latent.autoencoder={kind!r} to diffuse its latents."
                )
        return
    from diffax import latents

    _choice(latent.normalization, "latent.normalization", latents.NORMALIZATIONS)
    if latent.normalization == "per_channel" and latent.autoencoder != "workdir":
        raise ConfigError(
            "latent.normalization='per_channel' reads each channel's statistics from an "
            f"autoencoder workdir's latent_stats.json; latent.autoencoder={latent.autoencoder!r} "
            "has none: use latent.normalization='scalar' with latent.scale."
        )
    if latent.normalization == "per_channel" and latent.scale is not None:
        raise ConfigError(
            "latent.scale is set with latent.normalization='per_channel', whose scales come from "
            "latent_stats.json: unset latent.scale or use latent.normalization='scalar'."
        )
    if latent.scale is not None:
        _number(latent.scale, "latent.scale", 0.0, low_open=True)  # Latents are multiplied by it.
    if (
        config.super_resolution.low_res_size
        or config.inpainting.mask_cond
        or config.inpainting.repaint
    ):
        raise ConfigError(
            f"latent.autoencoder={latent.autoencoder!r} with super-resolution or inpainting "
            "(super_resolution.low_res_size, inpainting.mask_cond / repaint): image "
            "conditioning on latents is not built yet."
        )
    if config.eval.ode_bpd:
        raise ConfigError(
            "eval.ode_bpd=True dequantizes pixels; on latents it is not defined: set it False."
        )
    if config.eval.clip_denoised:
        raise ConfigError(
            "eval.clip_denoised=True clips predicted latents to [-1, 1], where latents are not "
            "confined: set eval.clip_denoised=False."
        )
    if latent.autoencoder == "sd_vae":
        z_channels = latents.sd_vae_model(config).z_channels
        if config.data.num_channels != z_channels:
            raise ConfigError(
                f"data.num_channels={config.data.num_channels}, but the SD VAE's latents have "
                f"{z_channels} channels: in a latent config data.num_channels is the latents'."
            )


def validate_config(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
    """Raises ConfigError with one sentence naming the field and what is accepted."""
    device_count = jax.device_count() if device_count is None else device_count
    seed = config.seed
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < SEED_LIMIT):
        raise ConfigError(f"config.seed={seed!r} must be an integer in [0, 2**32).")
    _validate_latent(config)
    _validate_data(config)
    _validate_text(config)  # First: a text model's backbone is named before its fields.
    _validate_model(config)
    _validate_diffusion(config)
    _validate_training(config, device_count)
    _validate_autoencoder_loss(config)
    _validate_eval(config, device_count)
    _validate_super_resolution(config)
    _validate_inpainting(config)
    mesh = config.mesh
    for field in ("data", "fsdp"):
        value = mesh[field]
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"mesh.{field}={value!r} must be an integer.")
    try:
        sharding.check_mesh(mesh.data, mesh.fsdp, device_count)
        tasks.get(config).check(config)  # The kind's own checks, after the shared ones.
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_num_samples(config: ml_collections.ConfigDict, num_samples: int | None) -> None:
    """Raises ConfigError in one sentence if --mode=sample's num_samples (None:
    eval.num_samples) samples would not fit in the host's available memory at once."""
    field = "--num_samples" if num_samples else "eval.num_samples"
    num_samples = num_samples or config.eval.num_samples
    # The samples the model draws; latents are counted as themselves, not decoded.
    per_sample = generate.host_bytes_per_sample(
        build.image_shape(config), config.data.get("text_length", 0)
    )
    try:
        generate.check_num_samples(num_samples, per_sample, field)
    except ValueError as e:
        raise ConfigError(str(e)) from None
