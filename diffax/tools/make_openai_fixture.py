"""Proves `diffax.openai_weights` on OpenAI's own code and writes the fixture of
`tests/openai_weights_test.py`.

Needs torch, jax/flax and checkouts of openai/guided-diffusion and openai/improved-diffusion
(only their `unet.py`, `nn.py`, `fp16_util.py`, `script_util.py`: no mpi4py or blobfile), which
diffax does not depend on: run it in a separate environment, from the repository root, e.g.

    /work/peer-venv/bin/pip install jax flax ml_collections optax chex absl-py
    PYTHONPATH=. /work/peer-venv/bin/python -m diffax.tools.make_openai_fixture \
        --guided_diffusion=/work/guided-diffusion --improved_diffusion=/work/improved-diffusion

For each tiny family in FAMILIES (16x16 inputs, width 32: the same flags as the published models,
fewer channels and blocks) it builds the original PyTorch model, re-draws EVERY parameter from
`fixture_state_dict` (their zero-initialised output layers would hide a transposed or misnamed
tensor; values rounded to float16), runs it in eval mode on fixed inputs, imports the state dict
into diffax's model and checks the outputs agree (max abs error <= 1e-4, float32) and the
parameter counts are equal. It writes into --output_dir, per family, `<family>.json` (the torch
and diffax arguments and the state dict's names and shapes: the weights are regenerated from
them by `fixture_state_dict`, so the fixture holds no weights) and `<family>.npz` (inputs `x`
[B, H, W, C] NHWC, `t` [B], `y` [B], `low_res` for the upsampler, and the reference `out`, NHWC
or logits [B, K]).

With --published NAME,... (or "all") it does the same check at full size for configs of
`configs/published/` (the torch model from the flags of that model's README, in PUBLISHED; batch
1, every parameter re-drawn with a smaller spread, std 0.02, as deep networks need) and writes
`published_layouts.json.gz`, {config: [[name, shape], ...]}, so the suite checks every published
config's names, shapes and count without torch. Nothing in diffax imports this module except
the tests (`fixture_state_dict`).

With --ddim=0,1,10 it samples the tiny class-conditional U-Net (adm_new_order) guided by the tiny
classifier with DDIM-25 (linear T = 1000, learned range) from the same x_T and labels in
guided-diffusion (`ddim_sample_loop` with classifier_sample.py's cond_fn) and in diffax
(`classifier_guidance.guided_model_fn` + `sampling.ddim_sample`), with and without clipping x0,
and prints the max abs difference of the images.
"""

import gzip
import importlib
import json
import os
import sys
import time

import numpy as np
from absl import flags

from diffax import tools

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the tool's flags (at run time: the tests import this module for its weights)."""
    flags.DEFINE_string("output_dir", "tests/data/openai_tiny", "Where the fixture goes.")
    flags.DEFINE_string("guided_diffusion", None, "A checkout of openai/guided-diffusion.")
    flags.DEFINE_string("improved_diffusion", None, "A checkout of openai/improved-diffusion.")
    flags.DEFINE_list(
        "published", [], "configs/published names to check at full size ('all': every one)."
    )
    flags.DEFINE_bool("skip_tiny", False, "Only the --published checks.")
    flags.DEFINE_list(
        "ddim", [], "Classifier scales: compare DDIM-25 sampling with guided-diffusion's."
    )


SEED = 0
TOLERANCE = 1e-4  # Max abs error, float32.
BATCH = 3
TINY_STD = 0.2  # The tiny families' weight spread.
FULL_STD = 0.02  # Full size: deep stacks of residual blocks grow with a wider spread.

# Tiny versions of each architecture family: (source, torch class, torch kwargs, diffax kwargs).
# Each family turns on the flags its published models use, at 16x16 with width 32.
FAMILIES = {
    # guided-diffusion's ADM-64 flags: new attention order, head channels, BigGAN up/down,
    # scale-shift norm, learned sigma, class-conditional, dropout (off in eval).
    "adm_new_order": (
        "guided",
        "UNetModel",
        dict(image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
             attention_resolutions=(2,), dropout=0.1, channel_mult=(1, 2), num_classes=10,
             num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True,
             use_new_attention_order=True),
        dict(ch=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
             num_head_channels=16, dropout=0.1, resblock_updown=True, use_scale_shift_norm=True,
             use_new_attention_order=True, num_classes=10, null_class=False, out_channels=6),
    ),
    # guided-diffusion's ADM-128 / 256 flags with the legacy order; here also attention at
    # every level, plain conv resampling and no scale-shift norm (the LSUN-bedroom flags of
    # improved-diffusion), unconditional.
    "adm_legacy_order": (
        "guided",
        "UNetModel",
        dict(image_size=16, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=2,
             attention_resolutions=(1, 2), channel_mult=(1, 1), num_heads=2,
             use_scale_shift_norm=False, resblock_updown=False),
        dict(ch=32, channel_mult=(1, 1), num_res_blocks=2, attention_resolutions=(16, 8),
             num_heads=2, resblock_updown=False, use_scale_shift_norm=False,
             use_new_attention_order=False, out_channels=3),
    ),
    # improved-diffusion's CIFAR-10 / ImageNet-64 flags: its own U-Net (legacy order, heads by
    # count), learned sigma, class-conditional, and rescale_timesteps at T = 4000 (t / 4).
    "iddpm": (
        "improved",
        "UNetModel",
        dict(in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
             attention_resolutions=(2,), dropout=0.3, channel_mult=(1, 2), num_classes=10,
             num_heads=4, use_scale_shift_norm=True),
        dict(ch=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
             num_heads=4, dropout=0.3, use_scale_shift_norm=True, use_new_attention_order=False,
             num_classes=10, null_class=False, out_channels=6, timestep_scale=0.25),
    ),
    # guided-diffusion's upsamplers: SuperResModel, 8 -> 16 here (bilinear, concatenated).
    "adm_upsampler": (
        "guided",
        "SuperResModel",
        dict(image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
             attention_resolutions=(2,), channel_mult=(1, 2), num_classes=10,
             num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True),
        dict(ch=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
             num_head_channels=16, resblock_updown=True, use_scale_shift_norm=True,
             use_new_attention_order=False, num_classes=10, null_class=False, out_channels=6,
             concat_cond=True),
    ),
    # guided-diffusion's noisy classifiers: EncoderUNetModel with the attention pool.
    "adm_classifier": (
        "guided",
        "EncoderUNetModel",
        dict(image_size=16, in_channels=3, model_channels=32, out_channels=10, num_res_blocks=1,
             attention_resolutions=(1, 2), channel_mult=(1, 2), num_head_channels=16,
             use_scale_shift_norm=True, resblock_updown=True, pool="attention"),
        dict(ch=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(16, 8),
             num_head_channels=16, resblock_updown=True, use_scale_shift_norm=True,
             use_new_attention_order=False, num_classes=10),
    ),
}  # fmt: skip

# configs/published name -> (source, script_util function, its arguments: the README's flags).
_ADM = dict(learn_sigma=True, resblock_updown=True, use_scale_shift_norm=True)
_ADM256 = dict(_ADM, image_size=256, num_channels=256, num_res_blocks=2, num_head_channels=64,
               attention_resolutions="32,16,8")  # fmt: skip
_CLASSIFIER = dict(classifier_use_fp16=False, classifier_width=128, classifier_depth=2,
                   classifier_attention_resolutions="32,16,8",
                   classifier_use_scale_shift_norm=True, classifier_resblock_updown=True,
                   classifier_pool="attention")  # fmt: skip
_SR = dict(num_heads=4, num_heads_upsample=-1, dropout=0.0, use_checkpoint=False, use_fp16=False)
PUBLISHED = {
    "adm_imagenet64_cond": ("guided", "create_model", dict(
        _ADM, image_size=64, num_channels=192, num_res_blocks=3, num_head_channels=64,
        attention_resolutions="32,16,8", class_cond=True, dropout=0.1,
        use_new_attention_order=True)),
    "adm_imagenet128_cond": ("guided", "create_model", dict(
        _ADM, image_size=128, num_channels=256, num_res_blocks=2, num_heads=4,
        attention_resolutions="32,16,8", class_cond=True)),
    "adm_imagenet256_cond": ("guided", "create_model", dict(_ADM256, class_cond=True)),
    "adm_imagenet256_uncond": ("guided", "create_model", dict(_ADM256, class_cond=False)),
    "adm_imagenet512_cond": ("guided", "create_model", dict(
        _ADM256, image_size=512, class_cond=True)),
    "adm_lsun_bedroom": ("guided", "create_model", dict(_ADM256, class_cond=False, dropout=0.1)),
    # The cat and horse files share the bedroom's flags (the horse without dropout: 0.0).
    "adm_lsun_cat": ("guided", "create_model", dict(_ADM256, class_cond=False, dropout=0.1)),
    "adm_lsun_horse": ("guided", "create_model", dict(_ADM256, class_cond=False, dropout=0.1)),
    "adm_lsun_horse_nodropout": ("guided", "create_model", dict(
        _ADM256, class_cond=False, dropout=0.0)),
    "adm_upsampler_64_256": ("guided", "sr_create_model", dict(
        _SR, large_size=256, small_size=64, num_channels=192, num_res_blocks=2,
        num_head_channels=-1, attention_resolutions="32,16,8", class_cond=True, learn_sigma=True,
        resblock_updown=True, use_scale_shift_norm=True)),
    "adm_upsampler_128_512": ("guided", "sr_create_model", dict(
        _SR, large_size=512, small_size=128, num_channels=192, num_res_blocks=2,
        num_head_channels=64, attention_resolutions="32,16", class_cond=True, learn_sigma=True,
        resblock_updown=True, use_scale_shift_norm=True)),
    "adm_classifier64": ("guided", "create_classifier", dict(
        _CLASSIFIER, image_size=64, classifier_depth=4)),
    "adm_classifier128": ("guided", "create_classifier", dict(_CLASSIFIER, image_size=128)),
    "adm_classifier256": ("guided", "create_classifier", dict(_CLASSIFIER, image_size=256)),
    "adm_classifier512": ("guided", "create_classifier", dict(_CLASSIFIER, image_size=512)),
    "iddpm_cifar10_uncond": ("improved", "create_model", dict(
        image_size=32, num_channels=128, num_res_blocks=3, learn_sigma=True, class_cond=False,
        use_checkpoint=False, attention_resolutions="16,8", num_heads=4, num_heads_upsample=-1,
        use_scale_shift_norm=True, dropout=0.3)),
    "iddpm_imagenet64_uncond": ("improved", "create_model", dict(
        image_size=64, num_channels=128, num_res_blocks=3, learn_sigma=True, class_cond=False,
        use_checkpoint=False, attention_resolutions="16,8", num_heads=4, num_heads_upsample=-1,
        use_scale_shift_norm=True, dropout=0.0)),
    "iddpm_imagenet64_cond": ("improved", "create_model", dict(
        image_size=64, num_channels=192, num_res_blocks=3, learn_sigma=True, class_cond=True,
        use_checkpoint=False, attention_resolutions="16,8", num_heads=4, num_heads_upsample=-1,
        use_scale_shift_norm=True, dropout=0.0)),
}  # fmt: skip


def fixture_state_dict(
    layout: list[tuple[str, list[int]]], seed: int = SEED, std: float = TINY_STD
) -> dict[str, np.ndarray]:
    """Returns {name: float16 array} drawn N(0, std^2) in layout order from numpy's legacy
    RandomState (its stream is frozen across numpy versions): the fixture's weights."""
    rng = np.random.RandomState(seed)
    return {
        name: (rng.standard_normal(tuple(shape)) * std).astype(np.float16) for name, shape in layout
    }


def _layout(model) -> list[tuple[str, list[int]]]:
    """Returns [(name, shape)] of a torch model's state dict, in its order."""
    return [(name, list(value.shape)) for name, value in model.state_dict().items()]


def _load(model, state: dict[str, np.ndarray]) -> None:
    """Loads float16 arrays into a torch model as float32 (the values it then computes with)."""
    import torch

    model.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in state.items()})


def _inputs(batch: int, size: int, num_classes: int, seed: int) -> dict[str, np.ndarray]:
    """Returns fixed inputs: x [B, H, W, 3] NHWC, t [B] int, y [B] int, low_res at half size."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    t = np.array([0, 500, 999, 250][:batch], np.int64)
    y = np.array([3, 7, 9, 1][:batch], np.int64) % max(num_classes, 1)
    low = rng.uniform(-1, 1, (batch, size // 2, size // 2, 3)).astype(np.float32)
    return {"x": x, "t": t, "y": y, "low_res": low}


def _torch_forward(model, kind: str, inputs: dict, class_cond: bool, time_scale: float = 1.0):
    """Returns the torch model's output as NHWC (or logits) float32 numpy."""
    import torch

    nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # noqa: E731
    t = torch.from_numpy(inputs["t"]).float() * time_scale if time_scale != 1 else None
    t = torch.from_numpy(inputs["t"]) if t is None else t
    kwargs = {"y": torch.from_numpy(inputs["y"])} if class_cond else {}
    with torch.no_grad():
        if kind == "EncoderUNetModel":
            return model(nchw(inputs["x"]), t).numpy()
        if kind == "SuperResModel":
            kwargs["low_res"] = nchw(inputs["low_res"])
        out = model(nchw(inputs["x"]), t, **kwargs)
    return out.permute(0, 2, 3, 1).numpy()


def _diffax_forward(model, params, inputs: dict, sr: bool) -> np.ndarray:
    """Returns diffax's output for the same inputs (the upsampler's bilinear conditioning)."""
    import jax

    from diffax import super_resolution

    x = inputs["x"]
    y = inputs["y"].astype(np.int32) if getattr(model, "num_classes", 0) else None
    extra = {}
    if sr:
        extra["concat"] = super_resolution.upsample(inputs["low_res"], x.shape[1], "linear")
    fn = jax.jit(lambda p, x, t, y, e: model.apply({"params": p}, x, t, y, **e))
    return np.asarray(fn(params, x, inputs["t"].astype(np.int32), y, extra))


def _import_modules():
    """Puts the two checkouts on sys.path; returns {source: (unet module, script_util)}."""
    for path in (FLAGS.guided_diffusion, FLAGS.improved_diffusion):
        sys.path.insert(0, os.path.abspath(path))
    guided_unet = importlib.import_module("guided_diffusion.unet")
    improved_unet = importlib.import_module("improved_diffusion.unet")
    return {
        "guided": (guided_unet, importlib.import_module("guided_diffusion.script_util")),
        "improved": (improved_unet, importlib.import_module("improved_diffusion.script_util")),
    }


def _count(tree) -> int:
    from diffax import models

    return models.count_params(tree)


def _tiny(modules) -> None:
    """Checks and writes every tiny family."""
    import torch

    from diffax import openai_weights
    from diffax.models import classifier, unet

    os.makedirs(FLAGS.output_dir, exist_ok=True)
    for family, (source, cls, torch_kwargs, diffax_kwargs) in FAMILIES.items():
        torch.manual_seed(SEED)
        model = getattr(modules[source][0], cls)(**torch_kwargs).eval()
        layout = _layout(model)
        state = fixture_state_dict(layout)
        _load(model, state)
        num_classes = torch_kwargs.get("num_classes") or torch_kwargs.get("out_channels")
        inputs = _inputs(BATCH, 16, num_classes, SEED)
        scale = diffax_kwargs.get("timestep_scale", 1.0)
        cond = bool(torch_kwargs.get("num_classes"))
        out = _torch_forward(model, cls, inputs, cond, scale)
        if cls == "EncoderUNetModel":
            flax_model = classifier.NoisyClassifier(**diffax_kwargs)
        else:
            flax_model = unet.UNet(**diffax_kwargs)
        origin = "improved-diffusion" if source == "improved" else "guided-diffusion"
        params = openai_weights.convert_state_dict(
            state, flax_model, (16, 16, 3), source=family, origin=origin
        )
        ours = _diffax_forward(flax_model, params, inputs, cls == "SuperResModel")
        error = float(np.max(np.abs(ours - out)))
        torch_count = sum(p.numel() for p in model.parameters())
        print(
            f"{family}: max abs error {error:.2e}, |out| max {np.abs(out).max():.2f}, "
            f"parameters torch {torch_count} diffax {_count(params)}"
        )
        if error > TOLERANCE or torch_count != _count(params):
            raise SystemExit(f"{family}: the import does not reproduce {source}'s {cls}.")
        record = dict(source=origin, torch_class=cls, torch=torch_kwargs, diffax=diffax_kwargs,
                      seed=SEED, std=TINY_STD, layout=layout)  # fmt: skip
        with open(os.path.join(FLAGS.output_dir, f"{family}.json"), "w") as f:
            json.dump(record, f)
        arrays = {k: v for k, v in inputs.items() if k != "low_res" or cls == "SuperResModel"}
        arrays = {k: v.astype(np.int32) if v.dtype == np.int64 else v for k, v in arrays.items()}
        np.savez(os.path.join(FLAGS.output_dir, f"{family}.npz"), out=out, **arrays)


def _published(modules, names: list[str]) -> None:
    """Checks the named published configs at full size; writes their layouts."""
    import torch

    from diffax import build, openai_weights

    path = os.path.join(FLAGS.output_dir, "published_layouts.json.gz")
    layouts = {}
    if os.path.exists(path):
        with gzip.open(path, "rt") as f:
            layouts = json.load(f)
    for name in names:
        source, function, kwargs = PUBLISHED[name]
        start = time.time()
        config = importlib.import_module(f"configs.published.{name}").get_config()
        torch.manual_seed(SEED)
        model = getattr(modules[source][1], function)(**kwargs).eval()
        layout = _layout(model)
        state = fixture_state_dict(layout, std=FULL_STD)
        _load(model, state)
        flax_model = build.create_model(config)
        image_shape = build.image_shape(config)
        origin = "improved-diffusion" if source == "improved" else "guided-diffusion"
        params = openai_weights.convert_state_dict(
            state, flax_model, image_shape, source=name, origin=origin
        )
        del state
        kind = {"create_classifier": "EncoderUNetModel", "sr_create_model": "SuperResModel"}
        cls = kind.get(function, "UNetModel")
        num_classes = config.data.num_classes
        inputs = _inputs(1, image_shape[0], num_classes, SEED)
        inputs["t"] = np.array([config.diffusion.num_timesteps // 3], np.int64)
        scale = config.model.unet.timestep_scale if cls != "EncoderUNetModel" else 1.0
        out = _torch_forward(model, cls, inputs, bool(kwargs.get("class_cond")), scale)
        ours = _diffax_forward(flax_model, params, inputs, cls == "SuperResModel")
        error = float(np.max(np.abs(ours - out)))
        torch_count = sum(p.numel() for p in model.parameters())
        print(
            f"{name}: max abs error {error:.2e}, |out| max {np.abs(out).max():.2f}, parameters "
            f"torch {torch_count:,} diffax {_count(params):,} ({time.time() - start:.0f} s)",
            flush=True,
        )
        if error > TOLERANCE or torch_count != _count(params):
            raise SystemExit(f"{name}: the import does not reproduce {source}'s {cls}.")
        layouts[name] = layout
        with gzip.open(path, "wt") as f:
            json.dump(layouts, f, sort_keys=True)
        del model, params


def _ddim(modules, scales: list[float], clip: bool) -> None:
    """Samples the tiny class-conditional U-Net guided by the tiny classifier with DDIM-25 from
    the same x_T and labels in guided-diffusion (`ddim_sample_loop`, classifier_sample.py's
    cond_fn) and in diffax (`guided_model_fn` + `ddim_sample`); prints the max abs difference."""
    import jax
    import torch
    import torch.nn.functional as F

    from diffax import classifier_guidance, diffusion, models, openai_weights, sampling, schedules
    from diffax.models import classifier, unet

    guided_unet, script_util = modules["guided"]
    respace = importlib.import_module("guided_diffusion.respace")
    nets = {}
    for family in ("adm_new_order", "adm_classifier"):
        _, cls, torch_kwargs, diffax_kwargs = FAMILIES[family]
        torch.manual_seed(SEED)
        model = getattr(guided_unet, cls)(**torch_kwargs).eval()
        state = fixture_state_dict(_layout(model))
        _load(model, state)
        flax_cls = classifier.NoisyClassifier if cls == "EncoderUNetModel" else unet.UNet
        flax_model = flax_cls(**diffax_kwargs)
        params = openai_weights.convert_state_dict(state, flax_model, (16, 16, 3))
        nets[family] = (model, flax_model, params)
    betas = schedules.get_named_beta_schedule("linear", 1000)
    theirs = script_util.create_gaussian_diffusion(
        steps=1000, learn_sigma=True, noise_schedule="linear", timestep_respacing="ddim25"
    )
    ours = diffusion.GaussianDiffusion.create(betas, mean_type="eps", var_type="learned_range")
    ours = ours.respace(schedules.space_timesteps(1000, "ddim25"))
    del respace
    rng = np.random.default_rng(SEED)
    x_t = rng.standard_normal((4, 16, 16, 3)).astype(np.float32)
    y = np.array([1, 3, 5, 7], np.int64)
    torch_model, flax_unet, unet_params = nets["adm_new_order"]
    torch_classifier, flax_classifier, classifier_params = nets["adm_classifier"]
    for scale in scales:

        def cond_fn(x, t, y=None, scale=scale):
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                log_probs = F.log_softmax(torch_classifier(x_in, t), dim=-1)
                selected = log_probs[range(len(log_probs)), y.view(-1)]
                return torch.autograd.grad(selected.sum(), x_in)[0] * scale

        with torch.no_grad():
            reference = theirs.ddim_sample_loop(
                torch_model,
                (4, 3, 16, 16),
                noise=torch.from_numpy(x_t).permute(0, 3, 1, 2),
                clip_denoised=clip,
                cond_fn=cond_fn if scale else None,
                model_kwargs={"y": torch.from_numpy(y)},
            )
        reference = reference.permute(0, 2, 3, 1).numpy()
        labels = y.astype(np.int32)
        model_fn = models.model_fn(flax_unet, unet_params, labels)
        guidance = models.guidance_fn(flax_classifier, classifier_params, labels)
        model_fn = classifier_guidance.guided_model_fn(model_fn, guidance, ours, float(scale))
        sample = jax.jit(
            lambda noise, model_fn=model_fn: sampling.ddim_sample(
                ours, model_fn, noise.shape, jax.random.PRNGKey(0), clip_denoised=clip, noise=noise
            )["sample"]
        )(x_t)
        error = float(np.max(np.abs(np.asarray(sample) - reference)))
        print(
            f"DDIM-25, classifier scale {scale}, clip_denoised={clip}: max abs difference "
            f"{error:.2e} (|x_0| max {np.abs(reference).max():.2f})",
            flush=True,
        )


def main(argv):
    del argv
    modules = _import_modules()
    if not FLAGS.skip_tiny:
        _tiny(modules)
    names = list(PUBLISHED) if FLAGS.published == ["all"] else FLAGS.published
    unknown = [n for n in names if n not in PUBLISHED]
    if unknown:
        raise ValueError(f"--published: {', '.join(unknown)} not in {', '.join(PUBLISHED)}.")
    _published(modules, names)
    for clip in (True, False):
        if FLAGS.ddim:
            _ddim(modules, [float(scale) for scale in FLAGS.ddim], clip)


if __name__ == "__main__":
    define_flags()
    tools.run(main, required=["guided_diffusion", "improved_diffusion"])
