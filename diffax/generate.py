"""Batched sampling from a trained model with the config's sampler, sharded over the mesh.

`Generator` compiles one sampling program per batch shape and draws any number of samples in
batches of eval.batch_size (or fewer when fewer are wanted). Class-conditional models get labels
0, 1, ..., K-1, 0, 1, ... (one grid column per class) and classifier-free guidance when
eval.guidance_scale > 0. Text-conditioned models get, for the same labels, captions by the held-out
templates of diffax.datasets.captions (or one given prompt), guided against the empty caption;
models on stored embeddings (data.text_embeddings) take the eval split's, in example order, guided
against the null context (zero embeddings, every key masked).
"""

import functools
import math
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from diffax import diffusion, models, sampling, schedules, sharding, solvers
from diffax.datasets import captions
from diffax.models import text_encoder

# config.eval.sampler values: the discrete chain's own samplers (DDPM uses a learned variance;
# DDIM respaces with eval.ddim_eta), then the few-step samplers of diffax.solvers on a grid of
# eval.sample_steps noise levels spaced by eval.sample_spacing.
CHAIN_SAMPLERS = ("ddpm", "ddim")
SAMPLERS = CHAIN_SAMPLERS + tuple(name for name in solvers.SAMPLERS if name != "ddim")


def solver_grid(
    config: ml_collections.ConfigDict, process: diffusion.GaussianDiffusion
) -> solvers.NoiseGrid:
    """Returns the noise grid a diffax.solvers sampler runs on (eval.sample_steps, 0: all)."""
    steps = config.eval.sample_steps or process.num_timesteps
    spacing = config.eval.sample_spacing
    if spacing == "auto":
        spacing = solvers.default_spacing(config.eval.sampler)
    timesteps = solvers.spacing_timesteps(process, steps, spacing)
    return solvers.grid_from_discrete(process, timesteps)


def solver_options(config: ml_collections.ConfigDict) -> dict:
    """Returns the keyword options of the config's solver (order, eta) where they apply."""
    ev, options = config.eval, {}
    if ev.solver_order and ev.sampler in solvers.SOLVER_ORDERS:
        options["order"] = ev.solver_order
    if ev.sampler == "euler_ancestral":
        options["eta"] = ev.ddim_eta if ev.ddim_eta else 1.0
    return options


def sampling_process(
    config: ml_collections.ConfigDict, process: diffusion.GaussianDiffusion
) -> diffusion.GaussianDiffusion:
    """Returns the process to sample from: respaced to eval.sample_steps when that is set."""
    steps = config.eval.sample_steps
    if not steps or steps == process.num_timesteps:
        return process
    spec = f"ddim{steps}" if config.eval.sampler == "ddim" else str(steps)
    return process.respace(schedules.space_timesteps(process.num_timesteps, spec))


def sample_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """Returns the class of each sample: 0, 1, ..., K-1, 0, 1, ... (zeros when unconditional)."""
    return (np.arange(num_samples) % max(num_classes, 1)).astype(np.int32)


PROMPT_SHOWN = 60  # Characters of a --prompt quoted in an error message.


def check_prompt(prompt: str | None, text: bool, stored: bool, text_length: int) -> None:
    """Raises ValueError in one sentence if a prompt is given to a model without a text encoder
    (text=False) or on stored embeddings (stored=True), or does not fit in text_length tokens."""
    if prompt is None:
        return
    if stored:
        raise ValueError(
            "--prompt: this model conditions on text embeddings stored beside the data "
            "(data.text_embeddings) and cannot encode new text; sample without --prompt to draw "
            "from the eval split's stored embeddings."
        )
    if not text:
        raise ValueError(
            "--prompt needs a text-conditioned model (model.text_cond=True, e.g. "
            "configs/digits_text.py); this config has none."
        )
    try:
        size = len(prompt.encode("utf-8"))
    except UnicodeEncodeError as e:  # Bytes that are not UTF-8, as Python decodes argv.
        raise ValueError(
            f"--prompt={shown_prompt(prompt)} is not valid UTF-8 (from character {e.start}); "
            "give the caption in UTF-8."
        ) from None
    if size > text_length - 1:
        raise ValueError(
            f"--prompt={shown_prompt(prompt)} is {size} UTF-8 bytes; data.text_length="
            f"{text_length} holds at most {text_length - 1} (one token is the BOS): shorten it."
        )


def shown_prompt(prompt: str, limit: int = PROMPT_SHOWN) -> str:
    """Returns the prompt quoted for a message: its first `limit` characters (then "..."), bytes
    that are not UTF-8 as \\xNN."""
    cut = prompt if len(prompt) <= limit else prompt[:limit] + "..."
    try:
        text = cut.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # A lone surrogate that is no escaped byte.
        text = cut.encode("utf-8", "backslashreplace").decode("utf-8")
    return f"'{text}'"


def host_bytes_per_sample(image_shape: tuple[int, ...], text_length: int = 0) -> int:
    """Returns the host bytes one sample of --mode=sample holds at its peak, while the .npz is
    written: float32 [H, W, C] three times (the samples and two temporaries of
    images.to_levels), its uint8 levels, its label (int64 twice, then int32) and its caption
    tokens (int32 [text_length])."""
    pixels = math.prod(image_shape)
    return 3 * 4 * pixels + pixels + 8 + 8 + 4 + 4 * text_length


def available_host_bytes() -> int | None:
    """Returns the host memory a new allocation can take now, in bytes: /proc/meminfo's
    MemAvailable (Linux), else the free physical pages (os.sysconf); None where neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # The file counts kB (KiB).
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def check_num_samples(
    num_samples: int,
    per_sample: int,
    field: str = "--num_samples",
    available: int | None = None,
) -> None:
    """Raises ValueError in one sentence naming `field` and the largest count that fits if
    num_samples samples of per_sample host bytes (host_bytes_per_sample) exceed the available
    memory (default: available_host_bytes(); unknown: no check)."""
    available = available_host_bytes() if available is None else available
    if available is None or num_samples * per_sample <= available:
        return
    raise ValueError(
        f"{field}={num_samples} would hold about {_gib(num_samples * per_sample)} of samples in "
        f"host memory at once ({per_sample} bytes each), but {_gib(available)} is available; "
        f"use at most {field}={max(available // per_sample, 0)}."
    )


def _gib(size: int) -> str:
    return f"{size / 2**30:.3g} GiB"


class Generator:
    """Draws samples with the config's sampler; compiled once per batch shape."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        model,
        process: diffusion.GaussianDiffusion,
        mesh: Mesh,
        num_samples: int | None = None,
        classifier: tuple | None = None,
        prompt: str | None = None,
    ):
        self.config = config
        self.model = model
        self.num_classes = getattr(model, "num_classes", 0)
        self.text = text_encoder.is_text_conditioned(model)
        # Stored embeddings (data.text_embeddings): samples take the eval split's, in order.
        self.stored = text_encoder.is_context_conditioned(model)
        self._stored_rows = None  # (embeddings [N, L, D], mask [N, L], labels [N]), on first use.
        check_prompt(prompt, self.text, self.stored, config.data.get("text_length", 0))
        self.prompt = prompt
        # (noisy classifier model, params) for classifier guidance at eval.classifier_scale.
        self.classifier_model, self.classifier_params = classifier or (None, None)
        self.label_classes = self.num_classes or getattr(self.classifier_model, "num_classes", 0)
        if self.text and prompt is None:
            self.label_classes = config.data.num_classes  # The digit each prompt names.
        self.mesh = mesh
        # A continuous-time process (build.ContinuousProcess): its grid depends on the params.
        self.continuous = not isinstance(process, diffusion.GaussianDiffusion)
        if self.continuous:
            self.process, self.grid = process, None
            self.num_steps = config.eval.sample_steps
        elif config.eval.sampler in CHAIN_SAMPLERS:
            self.process, self.grid = sampling_process(config, process), None
            self.num_steps = self.process.num_timesteps
        else:
            self.process, self.grid = process, solver_grid(config, process)
            self.num_steps = self.grid.num_steps
        self.nfe = None  # Model calls per batch (a doubled guidance batch is one call).
        # Batches of eval.batch_size, or fewer when fewer samples are wanted (a multiple of the
        # device count, so the batch splits evenly over the mesh).
        devices = mesh.size
        wanted = -(-(num_samples or config.eval.num_samples) // devices) * devices
        self.batch_size = min(config.eval.batch_size, wanted)
        self.shape = (
            self.batch_size,
            config.data.image_size,
            config.data.image_size,
            config.data.num_channels,
        )
        self._sample = jax.jit(self._sample_batch, out_shardings=sharding.batch_sharding(mesh))
        self._chains: dict[int, Callable] = {}  # return_every -> jitted sampler with the chain.

    def _sample_batch(
        self,
        params,
        key: jax.Array,
        labels: jax.Array,
        classifier_params=None,
        conditioning=None,
        return_every=0,
        tokens: jax.Array | None = None,
        context: dict[str, jax.Array] | None = None,
    ):
        """Returns one batch of samples in [-1, 1]: [B, H, W, C]; with return_every = k > 0 also
        the chain, every k-th step's x [steps // k, B, H, W, C] from the same scan.

        conditioning: the backbone's further inputs for this batch (image conditioning: concat
        [B, H, W, C'], aug_level [B]) or None; tokens [B, L]: the captions of a text-conditioned
        model; context {"context": [B, L, D], "context_mask": [B, L]}: stored embeddings."""
        ev, model = self.config.eval, self.model
        grid = self.grid
        if self.continuous:
            from diffax import continuous

            grid = continuous.sampling_grid(
                self.process.gamma_fn(params),
                self.num_steps,
                gamma_range=self.process.gamma_range,
            )
            params = self.process.model_params(params)
        if self.stored and ev.guidance_scale:
            conditional = lambda x, t, c: models.model_fn(model, params, context=c)(x, t)
            null = text_encoder.null_context(1, model.length, model.width)
            model_fn = sampling.classifier_free_guidance(
                conditional,
                context,
                null_label=jax.tree.map(lambda a: a[0], null),  # Zeros, every key masked.
                guidance_scale=ev.guidance_scale,
                guided_channels=ev.guidance_channels,
            )
        elif self.text and ev.guidance_scale:
            conditional = lambda x, t, c: models.model_fn(model, params, tokens=c)(x, t)
            model_fn = sampling.classifier_free_guidance(
                conditional,
                tokens,
                null_label=text_encoder.null_tokens(1, tokens.shape[1])[0],  # The empty caption.
                guidance_scale=ev.guidance_scale,
                guided_channels=ev.guidance_channels,
            )
        elif self.num_classes and ev.guidance_scale:
            # The guided call doubles the batch (labels, then the null class): so does the rest.
            doubled = jax.tree.map(lambda c: jnp.concatenate([c, c]), conditioning)
            conditional = lambda x, t, y: models.model_fn(model, params, y, conditioning=doubled)(
                x, t
            )
            model_fn = sampling.classifier_free_guidance(
                conditional,
                labels,
                null_label=self.num_classes,
                guidance_scale=ev.guidance_scale,
                guided_channels=ev.guidance_channels,
            )
        else:
            model_fn = models.model_fn(
                model, params, labels, tokens=tokens, context=context, conditioning=conditioning
            )
        guidance_fn, scale = None, 0.0
        if self.classifier_model is not None and ev.classifier_scale:
            guidance_fn = models.guidance_fn(self.classifier_model, classifier_params, labels)
            scale = ev.classifier_scale
        if grid is not None:
            denoise_fn = solvers.denoiser(
                model_fn,
                grid,
                self.process.mean_type,
                self.process.learn_sigma,
                clip_denoised=ev.clip_denoised,
                guidance_fn=guidance_fn,
                guidance_scale=scale,
            )
            out = solvers.sample(
                ev.sampler,
                denoise_fn,
                grid,
                self.shape,
                key,
                return_every=return_every,
                **solver_options(self.config),
            )
            self.nfe = out["nfe"]
        elif ev.sampler == "ddim":
            out = sampling.ddim_sample(  # The eps shift (Algorithm 2), as guided-diffusion.
                self.process,
                model_fn,
                self.shape,
                key,
                eta=ev.ddim_eta,
                clip_denoised=ev.clip_denoised,
                return_every=return_every,
                guidance_fn=guidance_fn,
                guidance_scale=scale,
            )
        else:
            out = sampling.ddpm_sample(  # The mean shift s Sigma grad (Algorithm 1).
                self.process,
                model_fn,
                self.shape,
                key,
                clip_denoised=ev.clip_denoised,
                return_every=return_every,
                guidance_fn=guidance_fn,
                guidance_scale=scale,
            )
        if grid is None:
            self.nfe = self.num_steps
        if return_every:
            return out["sample"], out["intermediates"]
        return out["sample"]

    @property
    def forward_passes_per_sample(self) -> int:
        """Returns network evaluations per image: model calls, x2 with classifier-free guidance."""
        calls = self.nfe if self.nfe is not None else self.num_steps
        guided = (self.num_classes or self.text or self.stored) and self.config.eval.guidance_scale
        calls *= 2 if guided else 1
        # A classifier gradient costs about a forward and a backward of the (smaller) classifier.
        return calls

    def labels(self, num_samples: int) -> np.ndarray | None:
        """Returns the class each of num_samples samples is drawn for (None: a free prompt)."""
        if self.prompt is not None:
            return None
        if self.stored:  # The labels of the eval examples whose embeddings the samples take.
            labels = self.stored_rows()[2]
            return labels[np.arange(num_samples) % len(labels)]
        return sample_labels(num_samples, self.label_classes)

    def stored_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns the eval split's stored (embeddings [N, L, D], mask [N, L], labels [N]) in
        example order: sample i takes row i mod N."""
        if self._stored_rows is None:
            from diffax import input_pipeline, text_embeddings

            data = self.config.data
            table = text_embeddings.load(data, data.eval_split, self.model.width)
            # The index counts examples of the whole split, not of a slice of it.
            name = text_embeddings.split_name(data.eval_split)
            labels = input_pipeline.split_labels(data, name)
            if table.index[-1] >= len(labels):
                raise ValueError(
                    f"data.text_embeddings: {table.path} indexes example {table.index[-1]}, but "
                    f"split {name!r} has {len(labels)}."
                )
            self._stored_rows = (table.embeddings, table.mask, labels[table.index])
        return self._stored_rows

    def prompts(self, num_samples: int) -> list[str] | None:
        """Returns the caption of each sample of a text-conditioned model (else None): the given
        prompt, or label i's caption by a held-out template fixed by (config.seed, i)."""
        if not self.text:
            return None
        if self.prompt is not None:
            return [self.prompt] * num_samples
        return captions.captions(self.labels(num_samples), self.config.seed, "test")

    def prompt_templates(self, num_samples: int) -> np.ndarray | None:
        """Returns the held-out template index of each sample's prompt (None with one prompt)."""
        if not self.text or self.prompt is not None:
            return None
        return captions.template_indices(self.config.seed, num_samples, "test")

    def generate(
        self,
        params,
        num_samples: int,
        seed: int = 0,
        labels: np.ndarray | None = None,
        conditioning: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Returns num_samples images in [-1, 1] as float32 numpy [N, H, W, C]."""
        return self.generate_with_chain(
            params, num_samples, seed, labels=labels, conditioning=conditioning
        )[0]

    def generate_with_chain(
        self,
        params,
        num_samples: int,
        seed: int = 0,
        chain_frames: int = 0,
        labels: np.ndarray | None = None,
        conditioning: dict[str, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Returns (images [N, H, W, C], chain [F + 1, n, H, W, C] or None) in [-1, 1].

        labels [N] default to `self.labels(N)`; conditioning holds the backbone's further inputs,
        [N, ...] each (super-resolution). With chain_frames = F > 0 the first batch's sampler also
        returns x every steps // F steps (the same scan that draws the images, not a second run):
        the chain of its n samples, the final images last. The images are those generate()
        returns.
        """
        if labels is None:
            labels = self.labels(num_samples)
        else:
            labels = np.asarray(labels, np.int32)
        if labels is None:
            labels = np.zeros(num_samples, np.int32)
        prompts = self.prompts(num_samples)
        all_tokens = (
            None
            if prompts is None
            else text_encoder.tokenize(prompts, self.config.data.text_length)
        )
        batches, chain = [], None
        for i in range(0, num_samples, self.batch_size):
            chunk = labels[i : i + self.batch_size]
            padded = np.resize(chunk, self.batch_size)  # Same shape every call: one compile.
            key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
            global_labels = jax.device_put(padded, sharding.batch_sharding(self.mesh))
            cond = None
            if conditioning is not None:
                cond = {
                    k: jax.device_put(
                        np.resize(v[i : i + self.batch_size], (self.batch_size, *v.shape[1:])),
                        sharding.batch_sharding(self.mesh),
                    )
                    for k, v in conditioning.items()
                }
            context = None
            if self.stored:
                embeddings, mask, _ = self.stored_rows()
                rows = (i + np.arange(self.batch_size)) % len(mask)  # Padding rows repeat.
                context = {
                    "context": jax.device_put(
                        embeddings[rows].astype(np.float32), sharding.batch_sharding(self.mesh)
                    ),
                    "context_mask": jax.device_put(mask[rows], sharding.batch_sharding(self.mesh)),
                }
            tokens = None
            if all_tokens is not None:
                rows = all_tokens[i : i + self.batch_size]
                rows = np.resize(rows, (self.batch_size, rows.shape[1]))  # Rows repeat.
                tokens = jax.device_put(rows, sharding.batch_sharding(self.mesh))
            args = (params, key, global_labels, self.classifier_params, cond)
            inputs = {"tokens": tokens, "context": context}
            if chain_frames and i == 0:
                every = max(1, self.num_steps // chain_frames)
                if every not in self._chains:
                    self._chains[every] = jax.jit(
                        functools.partial(self._sample_batch, return_every=every)
                    )
                batch, steps = self._chains[every](*args, **inputs)
                images = sharding.to_host(batch)
                chain = np.concatenate([sharding.to_host(steps), images[None]])[:, : len(chunk)]
            else:
                images = sharding.to_host(self._sample(*args, **inputs))
            batches.append(images[: len(chunk)])
        return np.concatenate(batches)[:num_samples], chain
