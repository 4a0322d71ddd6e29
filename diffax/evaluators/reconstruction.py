"""An autoencoder's reconstructions of the eval split, and the latent statistics latent diffusion
normalises by."""

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from diffax import autoencoder_losses, build, images, sharding
from diffax.evaluators import common


def evaluate(context: common.Context) -> dict[str, Any]:
    """Returns the eval split's reconstruction PSNR (dB, from the posterior
    mean), L1/L2 and KL per example, and the latent scale 1 / std of the posterior means, which
    latent diffusion multiplies the latents by (also written to WORKDIR/latent_stats.json, with
    each channel's mean and 1 / std as channel_shift and channel_scale); and a
    grid of originals (odd rows) over their reconstructions (even rows)."""
    config, workdir, step = context.config, context.workdir, context.step
    model, params = context.model, context.params

    @jax.jit
    def sums(params, batch):
        x = batch["image"]
        mean, logvar = model.apply({"params": params}, x, method=model.encode)
        x_hat = model.apply({"params": params}, mean, method=model.decode)
        mask = batch["mask"]
        rec = autoencoder_losses.reconstruction_loss(x, x_hat, config.training.reconstruction_loss)
        out = {
            "psnr": jnp.sum(autoencoder_losses.psnr(x, x_hat) * mask),
            "rec": jnp.sum(rec * mask),
            "kl": jnp.sum(autoencoder_losses.kl_to_standard_normal(mean, logvar) * mask),
            "z_sum": jnp.sum(mean * mask[:, None, None, None]),
            "z_sq": jnp.sum(jnp.square(mean) * mask[:, None, None, None]),
            # Per channel [z]: latent.normalization="per_channel" (diffax.latents).
            "zc_sum": jnp.sum(mean * mask[:, None, None, None], axis=(0, 1, 2)),
            "zc_sq": jnp.sum(jnp.square(mean) * mask[:, None, None, None], axis=(0, 1, 2)),
            "count": jnp.sum(mask),
        }
        return out, x_hat

    totals, shown = None, None
    for batch in context.eval_batches():
        out, x_hat = sums(params, sharding.global_batch(batch, context.mesh))
        out = jax.tree.map(lambda v: np.asarray(jax.device_get(v), np.float64), out)
        totals = out if totals is None else jax.tree.map(np.add, totals, out)
        if shown is None:
            shown = (batch["image"][:50], sharding.to_host(x_hat)[:50])
    n = totals["count"]
    latent_size = n * np.prod(
        model.apply(
            {"params": params}, jnp.zeros((1, *build.image_shape(config))), method=model.encode
        )[0].shape[1:]
    )
    z_mean, z_scale = autoencoder_losses.latent_stats(totals["z_sum"], totals["z_sq"], latent_size)
    channel_size = latent_size / totals["zc_sum"].shape[0]
    channel_mean, channel_scale = autoencoder_losses.latent_stats(
        totals["zc_sum"], totals["zc_sq"], channel_size
    )
    results: dict[str, Any] = dict(
        {
            "test/psnr": float(totals["psnr"] / n),
            f"test/{config.training.reconstruction_loss}": float(totals["rec"] / n),
            "test/kl": float(totals["kl"] / n),
            "test/num_examples": int(n),
            "latent/scale": float(z_scale),
            "latent/mean": float(z_mean),
        }
    )
    common.check_finite(common.scalars(results), step)  # Before latent_stats.json is written.
    if jax.process_index() == 0:
        originals, reconstructions = shown
        pairs = np.stack([originals, reconstructions], axis=1)  # [n, 2, H, W, C]
        rows = [pairs[i : i + 10].transpose(1, 0, 2, 3, 4) for i in range(0, len(pairs), 10)]
        grid = np.concatenate([r.reshape(-1, *r.shape[2:]) for r in rows])
        results["reconstructions_png"] = os.path.join(
            workdir, f"eval_reconstructions_{step:08d}.png"
        )
        images.save_png(
            results["reconstructions_png"],
            images.image_grid(grid, config.data.num_levels, min(10, len(originals))),
        )
        stats = {
            "step": step,
            "scale": results["latent/scale"],
            "mean": results["latent/mean"],
            "channel_shift": [float(v) for v in channel_mean],
            "channel_scale": [float(v) for v in channel_scale],
        }
        (epath.Path(workdir) / "latent_stats.json").write_text(json.dumps(stats, indent=2))
    return results
