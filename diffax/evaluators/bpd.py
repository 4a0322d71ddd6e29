"""Bits/dim of the eval split by the full-chain variational bound (discrete or VDM's continuous
one); on cached latents for latent diffusion; p(x | y) for a class-conditional model."""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffax import build, continuous, diffusion, latent_cache, models, sharding
from diffax.evaluators import common


def evaluate(context: common.Context) -> dict[str, Any]:
    """Returns test/bpd (p(x): the null class of a class-conditional model), its prior, decoder
    (and continuous diffusion) terms and test/num_examples; on latents the test/latent_* figures of
    `evaluate_latent_bpd`. An image-conditioned model's figures end in _given_low_res or
    _given_known_part: the bound is of the image given its low-resolution copy or known part."""
    config = context.config
    if context.latent is not None:
        return evaluate_latent_bpd(*context.args, latent=context.latent, workdir=context.workdir)
    suffix = "_given_low_res" if build.is_super_resolution(config) else ""
    suffix = "_given_known_part" if build.is_inpainting(config) else suffix
    bpd = evaluate_bpd(*context.args)
    return {f"test/{k}{suffix if 'bpd' in k else ''}": v for k, v in bpd.items()}


def evaluate_conditional(context: common.Context) -> dict[str, Any]:
    """Returns test/bpd_conditional: the bound of p(x | y) at the true labels."""
    return {"test/bpd_conditional": evaluate_bpd(*context.args, conditional=True)["bpd"]}


def _bpd_sums(
    params,
    batch,
    key,
    *,
    model,
    process,
    num_levels,
    null_label,
    t_samples=1,
    clip_denoised=True,
    conditioning_fn=None,
):
    """Returns masked sums over a batch of the bound's terms (bits/dim), and the example count.

    conditioning_fn(images, key) gives the backbone's further inputs (super-resolution: the
    bound is then of the image given its low-resolution copy)."""
    labels = batch["label"]
    cond = None
    if conditioning_fn is not None:
        cond = conditioning_fn(batch["image"], jax.random.fold_in(key, 1))
    if null_label is not None:
        labels = jnp.full_like(labels, null_label)
    mask = batch["mask"]
    if not isinstance(process, diffusion.GaussianDiffusion):  # Continuous: VDM's bound.
        out = continuous.bound_bpd(
            process.gamma_fn(params),
            models.model_fn(model, process.model_params(params), labels),
            batch["image"],
            key,
            t_samples,
            num_levels,
            mean_type=process.mean_type,
            gamma_range=process.gamma_range,
        )
        return {
            "total_bpd": jnp.sum(out["total_bpd"] * mask),
            "prior_bpd": jnp.sum(out["prior_bpd"] * mask),
            "decoder_bpd": jnp.sum(out["recon_bpd"] * mask),
            "diffusion_bpd": jnp.sum(out["diffusion_bpd"] * mask),
            "count": jnp.sum(mask),
        }
    out = diffusion.calc_bpd(
        process,
        models.model_fn(model, params, labels, conditioning=cond),
        batch["image"],
        key,
        clip_denoised=clip_denoised,
        num_levels=num_levels,
    )
    return {
        "total_bpd": jnp.sum(out["total_bpd"] * mask),
        "prior_bpd": jnp.sum(out["prior_bpd"] * mask),
        "decoder_bpd": jnp.sum(out["vb"][:, 0] * mask),  # The t = 0 term: the decoder's NLL.
        "count": jnp.sum(mask),
    }


def evaluate_latent_bpd(config, model, process, mesh, params, *, latent, workdir) -> dict:
    """Returns {"test/latent_bpd", "test/latent_prior_bpd", "test/latent_decoder_bpd",
    "test/latent_num_examples"}: the full-chain bound on the eval split's cached latents.

    The data are z = scale * posterior mean, continuous: the bound is on -log2 of a density
    (its t = 0 term a Gaussian density, not a discretized decoder), per latent dimension. It can
    be negative, shifts by -log2(scale) per dimension with the scale, and is no image bits/dim
    (it leaves out the autoencoder's p(x | z)).
    """
    cached = latent_cache.build_or_load(
        latent,
        config.data.eval_split,
        latent_cache.cache_dir(config, workdir),
        config.eval.batch_size,
    )
    local = sharding.per_process_batch_size(config.eval.batch_size, "eval.batch_size")
    batches = latent_cache.eval_iterator(
        cached, local, latent.scale, num_examples=config.eval.num_bpd_examples, shift=latent.shift
    )
    out = evaluate_bpd(config, model, process, mesh, params, batches=batches)
    return {f"test/latent_{k}": v for k, v in out.items()}


def evaluate_bpd(
    config, model, process, mesh, params, conditional: bool = False, batches=None
) -> dict:
    """Returns test-split bits/dim (mean per example) by the full-chain variational bound.

    A class-conditional model is scored through its null class (p(x)) unless conditional=True.
    Sums stay on the devices and are fetched once, after the last batch. batches: eval batches
    to score instead of data.eval_split's images (cached latents: then the bound ends in a
    Gaussian density, build.data_levels, and pred_x0 is not clipped).
    """
    num_classes = getattr(model, "num_classes", 0)
    null_label = num_classes if num_classes and not conditional else None
    bpd_sums = jax.jit(
        functools.partial(
            _bpd_sums,
            model=model,
            process=process,
            null_label=null_label,
            t_samples=config.eval.bpd_t_samples,
            conditioning_fn=build.conditioning_fn(config, train=False),
            num_levels=build.data_levels(config),
            clip_denoised=not build.is_latent(config),
        )
    )
    accumulate = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b), donate_argnums=(0,))
    data = batches if batches is not None else common.eval_batches(config)
    totals = None
    for i, batch in enumerate(data):
        out = bpd_sums(params, sharding.global_batch(batch, mesh), jax.random.PRNGKey(i))
        totals = out if totals is None else accumulate(totals, out)
    totals = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float64), totals)
    n = totals.pop("count")
    results = {
        "bpd": float(totals.pop("total_bpd") / n),
        **{name: float(value / n) for name, value in totals.items()},
    }
    return {**results, "num_examples": int(n)}
