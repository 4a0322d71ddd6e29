"""Inpainting: masks, the inputs of a mask-conditioned model, and RePaint for any other model.

Two ways to fill in the unknown part of an image x0 given a mask m (1 = known, 0 = to fill):
- A mask-conditioned model (Saharia et al. 2022, Palette) sees [x0 * m, m] concatenated to x_t
  and is trained on random masks (`conditioning`, `random_masks`).
- RePaint (Lugmayr et al. 2022) uses an unconditional model unchanged: each reverse step's known
  part is replaced by a forward-diffused copy of x0, and "resampling" jumps back up the chain
  (`jump_length` steps, `resamplings` times per jump point) let the model harmonise the two
  parts (Algorithm 1 and sec. 4.2).
Pure functions of NHWC arrays in [-1, 1]; masks are [B, H, W, 1].
"""

import jax
import jax.numpy as jnp
import numpy as np

from diffax.diffusion import GaussianDiffusion, ModelFn, extract
from diffax.sampling import p_sample

# Training masks: a random rectangle, a random half, or random pixels (each pixel known w.p. 1/2).
MASK_KINDS = ("box", "half", "pixels")
# Fixed masks of evaluation and sampling: the named part is unknown.
FIXED_MASKS = ("bottom_half", "top_half", "left_half", "right_half", "center")


def fixed_mask(kind: str, size: int) -> np.ndarray:
    """Returns the float32 [size, size, 1] mask (1 = known) whose named part is unknown."""
    m = np.ones((size, size, 1), np.float32)
    half, quarter = size // 2, size // 4
    parts = {
        "bottom_half": (slice(half, None), slice(None)),
        "top_half": (slice(None, half), slice(None)),
        "left_half": (slice(None), slice(None, half)),
        "right_half": (slice(None), slice(half, None)),
        "center": (slice(quarter, size - quarter), slice(quarter, size - quarter)),
    }
    if kind not in parts:
        raise ValueError(f"mask {kind!r} is not one of {', '.join(FIXED_MASKS)}")
    m[parts[kind]] = 0.0
    return m


def random_masks(key: jax.Array, batch: int, size: int, kinds: tuple[str, ...]) -> jax.Array:
    """Returns float32 [B, size, size, 1] training masks (1 = known), each of a kind drawn
    uniformly from kinds: "box" (sides in [size/4, 3 size/4] at a random place), "half" (one of
    four halves unknown), "pixels" (each pixel known with probability 1/2)."""
    k_kind, k_side, k_pos, k_half, k_pix = jax.random.split(key, 5)
    rows = jnp.arange(size)[None, :, None]  # [1, S, 1]
    cols = jnp.arange(size)[None, None, :]  # [1, 1, S]
    low, high = max(1, size // 4), max(2, (3 * size) // 4 + 1)
    side = jax.random.randint(k_side, (batch, 2), low, high)  # [B, 2]
    corner = jax.random.uniform(k_pos, (batch, 2)) * (size - side + 1)
    corner = corner.astype(jnp.int32)
    top, left = corner[:, 0, None, None], corner[:, 1, None, None]
    inside = (
        (rows >= top)
        & (rows < top + side[:, 0, None, None])
        & (cols >= left)
        & (cols < left + side[:, 1, None, None])
    )
    box = ~inside
    which = jax.random.randint(k_half, (batch, 1, 1), 0, 4)
    half = jnp.select(
        [which == 0, which == 1, which == 2],
        [rows < size // 2, rows >= size // 2, cols < size // 2],
        cols >= size // 2,
    )  # Known: the other half.
    pixels = jax.random.bernoulli(k_pix, 0.5, (batch, size, size))
    by_kind = {"box": box, "half": half, "pixels": pixels}
    choice = jax.random.randint(k_kind, (batch, 1, 1), 0, len(kinds))
    mask = jnp.select([choice == i for i in range(len(kinds))], [by_kind[k] for k in kinds])
    return mask.astype(jnp.float32)[..., None]


def conditioning(images: jax.Array, masks: jax.Array) -> dict[str, jax.Array]:
    """Returns a mask-conditioned model's input {"concat": [x0 * m, m]} `[B, H, W, C + 1]`."""
    return {"concat": jnp.concatenate([images * masks, masks], axis=-1)}


def repaint_schedule(num_steps: int, jump_length: int, resamplings: int) -> np.ndarray:
    """Returns RePaint's walk over the chain as int32 [N, 2] rows (i, up).

    up = 0: a reverse step with process index i, from state i + 1 to state i; up = 1: a forward
    step from state i to i + 1 (beta_i). On the way down from state num_steps to 0, each state that
    is a multiple of jump_length jumps back up jump_length steps and comes down again, resamplings
    - 1 times (Lugmayr et al. 2022, sec. 4.2); resamplings = 1 is the plain reverse chain.
    """
    ops, state, jumps = [], num_steps, {}
    while state > 0:
        ops.append((state - 1, 0))
        state -= 1
        while (
            state > 0
            and state % jump_length == 0
            and state + jump_length <= num_steps
            and jumps.get(state, 0) < resamplings - 1
        ):
            jumps[state] = jumps.get(state, 0) + 1
            ops += [(state + k, 1) for k in range(jump_length)]
            ops += [(state + k, 0) for k in reversed(range(jump_length))]
    return np.asarray(ops, np.int32)


def max_jump_length(num_steps: int) -> int:
    """Returns the longest jump repaint_schedule makes over num_steps steps: jumps leave states
    j, 2j, ... and climb j steps without passing num_steps, so only j <= num_steps // 2 jumps (a
    longer one is the plain chain). RePaint's own code (get_schedule_jump) jumps from t = 0, j,
    2j, ... < t_T - j instead, needing j < t_T."""
    return num_steps // 2


def repaint_sample(
    d: GaussianDiffusion,
    model_fn: ModelFn,
    known: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    *,
    jump_length: int = 10,
    resamplings: int = 10,
    clip_denoised: bool = True,
) -> jax.Array:
    """Returns inpainted images [B, H, W, C]: the unknown part (mask 0) drawn by RePaint with the
    model, the known part (mask 1) equal to `known` exactly. One lax.scan over the schedule."""
    schedule = jnp.asarray(repaint_schedule(d.num_timesteps, jump_length, resamplings))
    batch = known.shape[0]
    init_key, loop_key = jax.random.split(key)
    x = jax.random.normal(init_key, known.shape, known.dtype)

    def down(x, i, noise_key):
        t = jnp.full((batch,), i, jnp.int32)
        k_model, k_known = jax.random.split(noise_key)
        unknown = p_sample(d, model_fn, x, t, jax.random.normal(k_model, x.shape), clip_denoised)
        # The known part at state i: q(x_i | x0), i.e. abar of index i - 1 (x0 itself at i = 0).
        abar_prev = extract(d.alphas_cumprod_prev, t, x.ndim)
        noised = jnp.sqrt(abar_prev) * known + jnp.sqrt(1.0 - abar_prev) * jax.random.normal(
            k_known, x.shape
        )
        return mask * noised + (1.0 - mask) * unknown["sample"]

    def up(x, i, noise_key):
        beta = d.betas[i]
        return jnp.sqrt(1.0 - beta) * x + jnp.sqrt(beta) * jax.random.normal(noise_key, x.shape)

    def step(x, inputs):
        (i, is_up), noise_key = inputs
        return jax.lax.cond(is_up == 1, up, down, x, i, noise_key), None

    keys = jax.random.split(loop_key, schedule.shape[0])
    x, _ = jax.lax.scan(step, x, ((schedule[:, 0], schedule[:, 1]), keys))
    return x


def masked_psnr(x: jax.Array, y: jax.Array, masks: jax.Array, data_range: float = 2.0):
    """Returns the PSNR in dB per example `[B]` over the unknown pixels only (mask 0)."""
    unknown = 1.0 - masks
    channels = x.shape[-1]
    se = jnp.sum(jnp.square(x - y) * unknown, axis=(1, 2, 3))
    count = jnp.maximum(jnp.sum(unknown, axis=(1, 2, 3)) * channels, 1.0)
    return 10.0 * jnp.log10(data_range**2 / (se / count))
