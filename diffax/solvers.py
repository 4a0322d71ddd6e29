"""Few-step samplers on a grid of noise levels, shared by discrete- and continuous-time processes.

A `NoiseGrid` lists x_t = alpha x0 + sigma eps from the noisiest point (index 0, where sampling
starts) to the clean end (index N: alpha = 1, sigma = 0, never passed to the model), so N steps go
from point 0 to point N. lambda = log(alpha / sigma) is the half log-SNR and h = lambda_s - lambda_t
the step from t to the less noisy s. Arrays are NHWC. Samplers take `denoise_fn(x, i) -> (x0, eps)`
at grid point i (see `denoiser`), run on `jax.lax.scan` and return {"sample", "nfe"} plus
"intermediates" when asked. Nothing assumes alpha^2 + sigma^2 = 1 except v-prediction.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import flax.struct as struct
import jax
import jax.numpy as jnp
import numpy as np

from diffax import schedules
from diffax.diffusion import MEAN_TYPES, GaussianDiffusion

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
DenoiseFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
GuidanceFn = Callable[[jax.Array, jax.Array], jax.Array]

SPACINGS = ("uniform", "logsnr", "karras", "ddim", "respace")
SAMPLERS = (
    "ddim",
    "dpmpp_2m",
    "dpmpp_3m",
    "dpmpp_2m_sde",
    "unipc",
    "euler",
    "heun",
    "euler_ancestral",
    "ancestral",
)
# Accepted `order` per sampler; the others have a fixed order.
SOLVER_ORDERS = {
    "dpmpp_2m": (1, 2),
    "dpmpp_3m": (1, 2, 3),
    "dpmpp_2m_sde": (1, 2),
    "unipc": (1, 2, 3),
}


def _check_order(name: str, order: int) -> None:
    """Raises ValueError unless `order` is one that sampler `name` accepts."""
    if order not in SOLVER_ORDERS[name]:
        allowed = ", ".join(map(str, SOLVER_ORDERS[name]))
        raise ValueError(f"eval.solver_order={order} is not one of {allowed} for {name}.")


def _is_static_zero(value) -> bool:
    """Returns whether value is a Python number equal to 0 (known at trace time)."""
    return isinstance(value, int | float) and value == 0


@struct.dataclass
class NoiseGrid:
    """Noise levels x = alpha x0 + sigma eps from the noisiest point 0 to the clean end N."""

    alpha: jax.Array  # [N+1] float32, alpha[N] = 1
    sigma: jax.Array  # [N+1] float32, sigma[N] = 0
    model_t: jax.Array  # [N+1] int32 timestep or float32 time; model_t[N] is never used

    @property
    def num_steps(self) -> int:
        """Returns N, the number of steps from point 0 to the clean end."""
        return self.alpha.shape[0] - 1


def grid_from_alpha_sigma(
    alpha: jax.Array, sigma: jax.Array, model_t: jax.Array, dtype: jnp.dtype = jnp.float32
) -> NoiseGrid:
    """Returns the grid through alpha, sigma, model_t [N] (noisiest first) plus the clean end.

    dtype is that of alpha and sigma (float64 only for precision studies under enable_x64).
    """
    alpha, sigma = jnp.asarray(alpha, dtype), jnp.asarray(sigma, dtype)
    model_t = jnp.asarray(model_t)
    if alpha.ndim != 1 or alpha.shape[0] < 1 or sigma.shape != alpha.shape:
        raise ValueError(f"alpha and sigma must be equal non-empty 1-D arrays, got {alpha.shape}.")
    if model_t.shape != alpha.shape:
        raise ValueError(f"model_t must have shape {alpha.shape}, got {model_t.shape}.")
    return NoiseGrid(
        alpha=jnp.append(alpha, jnp.ones((), dtype)),
        sigma=jnp.append(sigma, jnp.zeros((), dtype)),
        model_t=jnp.append(model_t, jnp.zeros((), model_t.dtype)),
    )


def grid_from_discrete(d: GaussianDiffusion, timesteps: Sequence[int] | np.ndarray) -> NoiseGrid:
    """Returns the grid of d's steps `timesteps` (descending indices into d, respaced or not).

    The model is called with d.timestep_map[timesteps], the original process's timesteps.
    """
    steps = np.asarray(timesteps)
    if steps.ndim != 1 or steps.size < 1 or np.any(np.diff(steps) >= 0):
        raise ValueError(f"timesteps must be a non-empty strictly descending 1-D array: {steps}.")
    if steps[-1] < 0 or steps[0] >= d.num_timesteps:
        raise ValueError(f"timesteps must lie in 0..{d.num_timesteps - 1}, got {steps}.")
    steps = jnp.asarray(steps, jnp.int32)
    alpha = d.sqrt_alphas_cumprod[steps]
    # alpha * sqrt(1 / abar - 1): both factors were rounded from float64, whereas
    # sqrt(1 - abar) in float32 loses digits where abar is close to 1.
    sigma = alpha * d.sqrt_recipm1_alphas_cumprod[steps]
    return grid_from_alpha_sigma(alpha, sigma, d.timestep_map[steps])


def karras_sigmas(
    sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0
) -> np.ndarray:
    """Returns Karras et al. 2022 eq. 5 sigmas [num_steps], sigma_max first, without the final 0."""
    ramp = np.linspace(0.0, 1.0, num_steps) if num_steps > 1 else np.zeros(1)
    inv_min, inv_max = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (inv_max + ramp * (inv_min - inv_max)) ** rho


def _nearest_distinct(table: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Returns descending distinct indices of `table` (increasing [T]) nearest to each target.

    Ties created by snapping (where the table is coarse) are moved by the smallest shift that
    keeps len(targets) distinct indices within 0..T-1.
    """
    nearest = np.argmin(np.abs(table[None, :] - targets[:, None]), axis=1)
    idx = np.sort(nearest)
    for j in range(1, len(idx)):
        idx[j] = max(idx[j], idx[j - 1] + 1)
    idx[-1] = min(idx[-1], len(table) - 1)
    for j in range(len(idx) - 2, -1, -1):
        idx[j] = min(idx[j], idx[j + 1] - 1)
    return idx[::-1].copy()


def _is_respacing_spec(spacing: str) -> bool:
    """Returns whether spacing looks like a space_timesteps spec ("ddim50", "10,15,20")."""
    return re.fullmatch(r"ddim\d+|\d+(,\d+)*", spacing) is not None


# Karras et al. 2022 (sec. 5, Table 1) start their samplers at sigma = 80 for every model, VP ones
# included: beyond it x_t is noise to float precision, and a second-order step from the much
# larger sigma_max of a clipped cosine schedule (~2e4) overshoots by orders of magnitude.
KARRAS_SIGMA_MAX = 80.0
# The samplers of Karras et al., who space their steps by eq. 5; the others space by log-SNR.
KARRAS_SAMPLERS = ("euler", "heun", "euler_ancestral")


def default_spacing(sampler: str) -> str:
    """Returns the spacing a sampler's paper uses: "karras" for Karras et al.'s, else "logsnr"."""
    return "karras" if sampler in KARRAS_SAMPLERS else "logsnr"


def spacing_timesteps(d: GaussianDiffusion, num_steps: int, spacing: str) -> np.ndarray:
    """Returns num_steps distinct descending int indices into d (pass to `grid_from_discrete`).

    "uniform": round(linspace(T-1, 0)); "logsnr": uniform in log-SNR from t = T-1 to t = 0;
    "karras": eq. 5 (rho = 7) on sigma = sqrt((1 - abar) / abar) from min(sigma_{T-1},
    KARRAS_SIGMA_MAX) to sigma_0, snapped to the nearest timestep in log-SNR; all three include 0,
    "uniform" and "logsnr" T-1. "ddim" and "respace" are
    schedules.space_timesteps(T, f"ddim{N}") (includes 0) and (T, f"{N}") (includes 0 and T-1);
    a space_timesteps spec string ("ddim50", "10,15,20") is also accepted.
    """
    num_timesteps = d.num_timesteps
    if num_steps < 1:
        raise ValueError(f"eval.sample_steps={num_steps} must be at least 1.")
    if num_steps > num_timesteps:
        raise ValueError(
            f"eval.sample_steps={num_steps} exceeds diffusion.num_timesteps={num_timesteps}."
        )
    # log sigma with sigma = sqrt(1 / abar - 1), increasing in t; log-SNR = -2 log sigma.
    log_sigma = np.log(np.asarray(d.sqrt_recipm1_alphas_cumprod, np.float64))
    if spacing == "uniform":
        return np.round(np.linspace(num_timesteps - 1, 0, num_steps)).astype(np.int64)
    if spacing == "logsnr":
        targets = np.linspace(log_sigma[-1], log_sigma[0], num_steps)
        return _nearest_distinct(log_sigma, targets)
    if spacing == "karras":
        sigma_max = min(np.exp(log_sigma[-1]), KARRAS_SIGMA_MAX)
        sigmas = karras_sigmas(np.exp(log_sigma[0]), sigma_max, num_steps)
        return _nearest_distinct(log_sigma, np.log(sigmas))
    if spacing in ("ddim", "respace") or _is_respacing_spec(spacing):
        spec = {"ddim": f"ddim{num_steps}", "respace": str(num_steps)}.get(spacing, spacing)
        kept = np.array(sorted(schedules.space_timesteps(num_timesteps, spec), reverse=True))
        if len(kept) != num_steps:
            raise ValueError(
                f"eval.sample_spacing={spacing!r} keeps {len(kept)} steps, not "
                f"eval.sample_steps={num_steps}."
            )
        return kept
    raise ValueError(
        f"eval.sample_spacing={spacing!r} is not one of {', '.join(SPACINGS)} nor a "
        "space_timesteps spec such as 'ddim50' or '10,15,20'."
    )


def denoiser(
    model_fn: ModelFn,
    grid: NoiseGrid,
    mean_type: str,
    learn_sigma: bool,
    clip_denoised: bool = False,
    guidance_fn: GuidanceFn | None = None,
    guidance_scale: float = 0.0,
) -> DenoiseFn:
    """Returns fn(x [B, H, W, C], i) -> (x0_pred, eps_pred) at grid point i < N.

    model_fn(x, grid.model_t[i] as [B]) predicts eps, x0 or v (the first C of 2C channels when
    learn_sigma); v-prediction assumes alpha^2 + sigma^2 = 1. Clipping x0 to [-1, 1] re-derives eps.
    guidance_fn(x, model_t) -> grad_x log p(y | x) shifts eps by -scale * sigma * grad (Dhariwal &
    Nichol 2021, Algorithm 2 / eq. 14), after clipping; x0 is then re-derived (not clipped again).
    A guidance_scale of Python 0 (or no guidance_fn) skips the call: the unguided result exactly.
    """
    if mean_type not in MEAN_TYPES:
        raise ValueError(
            f"diffusion.mean_type={mean_type!r} is not one of {', '.join(MEAN_TYPES)}."
        )
    use_guidance = guidance_fn is not None and not _is_static_zero(guidance_scale)

    def denoise(x: jax.Array, i: jax.Array) -> tuple[jax.Array, jax.Array]:
        alpha, sigma = grid.alpha[i], grid.sigma[i]
        model_t = jnp.full((x.shape[0],), grid.model_t[i])  # [B]
        output = model_fn(x, model_t)
        channels = x.shape[-1]
        expected = 2 * channels if learn_sigma else channels
        if output.shape[-1] != expected:
            raise ValueError(
                f"learn_sigma={learn_sigma} needs a model output with {expected} channels for "
                f"{channels}-channel x, got shape {output.shape}."
            )
        output = output[..., :channels]  # [B, H, W, C], the mean part
        if mean_type == "eps":
            eps = output
            x0 = (x - sigma * eps) / alpha
        elif mean_type == "x0":
            x0 = output
            eps = (x - alpha * x0) / sigma
        else:  # v = alpha eps - sigma x0 (Salimans & Ho 2022), inverted with alpha^2 + sigma^2 = 1
            x0 = alpha * x - sigma * output
            eps = sigma * x + alpha * output
        if clip_denoised:
            x0 = jnp.clip(x0, -1.0, 1.0)
            eps = (x - alpha * x0) / sigma
        if use_guidance:
            eps = eps - guidance_scale * sigma * guidance_fn(x, model_t)
            x0 = (x - sigma * eps) / alpha
        return x0, eps

    return denoise


def _initial_x(grid: NoiseGrid, shape, key: jax.Array, noise: jax.Array | None) -> jax.Array:
    """Returns `noise`, else sqrt(alpha_0^2 + sigma_0^2) N(0, I): x_T's law for unit-variance data.

    That is N(0, I) for VP processes (alpha^2 + sigma^2 = 1) and N(0, (1 + sigma_max^2) I) for VE.
    """
    if noise is not None:
        return noise
    scale = jnp.sqrt(grid.alpha[0] ** 2 + grid.sigma[0] ** 2)  # 1 for VP, ~sigma_max for VE
    return scale * jax.random.normal(key, shape, jnp.result_type(float))


def _phi(k: int, h: jax.Array) -> jax.Array:
    """Returns phi_k(-h) = int_0^1 exp(-(1 - u) h) u^(k-1) / (k-1)! du for h > 0, elementwise."""
    small = h < 0.5
    h_small, h_large = jnp.where(small, h, 0.0), jnp.where(small, 1.0, h)
    # The recurrence cancels for small h; there the series sum_j (-h)^j / (j + k)! is used,
    # truncated after 14 terms (error below 0.5^14 / 14!).
    series = sum((-h_small) ** j * (1.0 / math.factorial(j + k)) for j in range(14))
    phi = -jnp.expm1(-h_large) / h_large
    for j in range(1, k):
        phi = (1.0 / math.factorial(j) - phi) / h_large  # phi_{j+1}(z) = (phi_j(z) - 1/j!) / z
    return jnp.where(small, series, phi)


def _step_table(grid: NoiseGrid, dtype, order: int = 1) -> dict[str, jax.Array]:
    """Returns per-step coefficients [N] for steps t = point i -> s = point i + 1, in dtype.

    ratio = exp(-h) = alpha_t sigma_s / (alpha_s sigma_t) is exactly 0 for the step to sigma = 0,
    whose h is infinite: there h is set to 1, as only first-order terms are used on that step.
    r1, r2 = h_{i-1} / h_i, h_{i-2} / h_i (1 before the first step); "order" = min(order, i + 1,
    N - i): multistep methods start at order 1 and end with lower orders (last step first order).
    """
    alpha, sigma = grid.alpha.astype(dtype), grid.sigma.astype(dtype)
    alpha_t, sigma_t, alpha_s, sigma_s = alpha[:-1], sigma[:-1], alpha[1:], sigma[1:]
    lam = jnp.log(alpha) - jnp.log(sigma)  # [N+1], +inf at the clean end
    h = jnp.where(sigma_s > 0, lam[1:] - lam[:-1], 1.0)  # [N]
    h_prev = jnp.concatenate([h[:1], h[:-1]])
    h_prev2 = jnp.concatenate([h_prev[:1], h_prev[:-1]])
    num_steps = grid.num_steps
    index = np.arange(num_steps)
    return {
        "i": jnp.asarray(index, jnp.int32),
        "order": jnp.asarray(np.minimum(np.minimum(order, index + 1), num_steps - index)),
        "alpha_t": alpha_t,
        "sigma_t": sigma_t,
        "alpha_s": alpha_s,
        "sigma_s": sigma_s,
        "ratio": alpha_t * sigma_s / (alpha_s * sigma_t),
        "h": h,
        "r1": h_prev / h,
        "r2": h_prev2 / h,
    }


def _step_noise(key: jax.Array, i: jax.Array, x: jax.Array) -> jax.Array:
    """Returns the N(0, I) noise of step i, like x, from fold_in(key, i)."""
    return jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)


def _run(step, carry, table: dict[str, jax.Array], return_every: int, nfe: int) -> dict:
    """Returns {"sample", "nfe"} of carry <- step(carry, table[i]) for i < N, carry[0] being x.

    With return_every = k > 0 also "intermediates" [N // k, B, H, W, C]: x after steps k, 2k, ...;
    nested scans keep only those in memory.
    """

    def body(c, row):
        return step(c, row), None

    if return_every <= 0:
        carry, _ = jax.lax.scan(body, carry, table)
        return {"sample": carry[0], "nfe": nfe}
    num_steps = table["i"].shape[0]
    num_kept = num_steps // return_every
    cut = num_kept * return_every
    head = jax.tree.map(lambda a: a[:cut].reshape((num_kept, return_every) + a.shape[1:]), table)

    def chunk(c, rows):
        c, _ = jax.lax.scan(body, c, rows)
        return c, c[0]

    carry, intermediates = jax.lax.scan(chunk, carry, head)  # [N // k, B, H, W, C]
    if cut < num_steps:
        carry, _ = jax.lax.scan(body, carry, jax.tree.map(lambda a: a[cut:], table))
    return {"sample": carry[0], "nfe": nfe, "intermediates": intermediates}


def sample_ddim(
    denoise_fn: DenoiseFn,
    grid: NoiseGrid,
    shape: tuple[int, ...],
    key: jax.Array,
    *,
    eta: float = 0.0,
    return_every: int = 0,
    noise: jax.Array | None = None,
) -> dict:
    """Returns {"sample" [B, H, W, C], "nfe": N, "intermediates"?} by DDIM; eta = 0 is an ODE."""
    init_key, step_key = jax.random.split(key)
    x = _initial_x(grid, shape, init_key, noise)
    table = _step_table(grid, x.dtype)
    # Song et al. 2021 eq. 16: sigma_eta = eta * std of q(x_s | x_t, x0), which for any (alpha,
    # sigma) is eta sigma_s sqrt(1 - e^-2h).
    table["eta_std"] = eta * table["sigma_s"] * jnp.sqrt(jnp.maximum(1.0 - table["ratio"] ** 2, 0))
    table["eps_coef"] = jnp.sqrt(jnp.maximum(table["sigma_s"] ** 2 - table["eta_std"] ** 2, 0.0))

    def step(carry, row):
        x0, eps = denoise_fn(carry[0], row["i"])
        # Eq. 12: x_s = alpha_s x0 + sqrt(sigma_s^2 - sigma_eta^2) eps + sigma_eta z.
        x_next = row["alpha_s"] * x0 + row["eps_coef"] * eps
        if not _is_static_zero(eta):
            x_next = x_next + row["eta_std"] * _step_noise(step_key, row["i"], x0)
        return (x_next,)

    return _run(step, (x,), table, return_every, nfe=grid.num_steps)


def _dpmpp_second_order(row, m0: jax.Array, m1: jax.Array) -> jax.Array:
    """Returns D = (1 + 1/(2r)) m0 - m1/(2r) (Lu et al. 2022b, Algorithm 2), or m0 at order 1."""
    return jnp.where(row["order"] == 1, m0, m0 + (m0 - m1) / (2.0 * row["r1"]))


def _dpmpp_third_order(row, m0: jax.Array, m1: jax.Array, m2: jax.Array) -> jax.Array:
    """Returns B with x_s = (sigma_s / sigma_t) x_t + alpha_s B to third order in h.

    The data-prediction solution x_s = (sigma_s/sigma_t) x_t + alpha_s sum_k h^(k+1)
    phi_(k+1)(-h) x0^(k)(lambda_t) (Lu et al. 2022b, Taylor expansion of the exponential
    integrator; phi_1(-h) h = 1 - e^-h), with x0' and x0'' from the quadratic through the last three
    points, in units of h: p(u) = m0 + d1 u + d2 u (u + r1), so h x0' = d1 + r1 d2, h^2 x0'' = 2 d2.
    """
    r1, r2, h = row["r1"], row["r2"], row["h"]
    d1 = (m0 - m1) / r1
    d2 = (d1 - (m1 - m2) / r2) / (r1 + r2)
    first = (1.0 - row["ratio"]) * m0
    return first + h * _phi(2, h) * (d1 + r1 * d2) + h * _phi(3, h) * 2.0 * d2


def _sample_dpmpp(denoise_fn, grid, shape, key, order, sde, return_every, noise) -> dict:
    """Returns the result dict of DPM-Solver++ (multistep, data prediction) at `order`."""
    init_key, step_key = jax.random.split(key)
    x = _initial_x(grid, shape, init_key, noise)
    table = _step_table(grid, x.dtype, order)
    history = (jnp.zeros_like(x), jnp.zeros_like(x))  # x0 predictions at points i-1, i-2

    def step(carry, row):
        x, (m1, m2) = carry
        m0, _ = denoise_fn(x, row["i"])
        data = _dpmpp_second_order(row, m0, m1)
        if not sde:
            bracket = (1.0 - row["ratio"]) * data
            if order == 3:
                bracket = jnp.where(row["order"] == 3, _dpmpp_third_order(row, m0, m1, m2), bracket)
            x_next = row["sigma_s"] / row["sigma_t"] * x + row["alpha_s"] * bracket
            return x_next, (m0, m1)
        # SDE-DPM-Solver++ (Lu et al. 2022b, solver of the data-prediction diffusion SDE): order 1
        # is x_s = (sigma_s/sigma_t) e^-h x_t + alpha_s (1 - e^-2h) m0 + sigma_s sqrt(1 - e^-2h) z,
        # the DDPM posterior step; 2M replaces m0 by the midpoint-form D of Algorithm 2.
        decay = 1.0 - row["ratio"] ** 2
        z = _step_noise(step_key, row["i"], x)
        x_next = (
            row["sigma_s"] / row["sigma_t"] * row["ratio"] * x
            + row["alpha_s"] * decay * data
            + row["sigma_s"] * jnp.sqrt(decay) * z
        )
        return x_next, (m0, m1)

    return _run(step, (x, history), table, return_every, nfe=grid.num_steps)


def sample_dpmpp_2m(
    denoise_fn: DenoiseFn,
    grid: NoiseGrid,
    shape: tuple[int, ...],
    key: jax.Array,
    *,
    order: int = 2,
    return_every: int = 0,
    noise: jax.Array | None = None,
) -> dict:
    """Returns {"sample", "nfe": N, "intermediates"?} by DPM-Solver++(2M); order 1 is DDIM."""
    _check_order("dpmpp_2m", order)
    return _sample_dpmpp(denoise_fn, grid, shape, key, order, False, return_every, noise)


def sample_dpmpp_3m(
    denoise_fn: DenoiseFn,
    grid: NoiseGrid,
    shape: tuple[int, ...],
    key: jax.Array,
    *,
    order: int = 3,
    return_every: int = 0,
    noise: jax.Array | None = None,
) -> dict:
    """Returns {"sample", "nfe": N, "intermediates"?} by DPM-Solver++(3M), last steps order 2, 1."""
    _check_order("dpmpp_3m", order)
    return _sample_dpmpp(denoise_fn, grid, shape, key, order, False, return_every, noise)


def sample_dpmpp_2m_sde(
    denoise_fn: DenoiseFn,
    grid: NoiseGrid,
    shape: tuple[int, ...],
    key: jax.Array,
    *,
    order: int = 2,
    return_every: int = 0,
    noise: jax.Array | None = None,
) -> dict:
    """Returns {"sample", "nfe": N, "intermediates"?} by SDE-DPM-Solver++(2M), midpoint form."""
    _check_order("dpmpp_2m_sde", order)
    return _sample_dpmpp(denoise_fn, grid, shape, key, order, True, return_every, noise)


def _lagrange_weights(nodes: list, b: list) -> list:
    """Returns a with sum_m a_m nodes[m]^(k-1) = b[k-1] for every k (a transposed Vandermonde).

    a_m = sum_k b_k [u^(k-1)] L_m(u), L_m the Lagrange basis polynomial of node m; elementwise.
    """
    weights = []
    for m, node_m in enumerate(nodes):
        poly, denominator = [1.0], 1.0  # coefficients of prod_{j != m} (u - r_j), constant first
        for j, node_j in enumerate(nodes):
            if j != m:
                shifted = [0.0, *poly]
                padded = [*poly, 0.0]
                poly = [hi - node_j * lo for hi, lo in zip(shifted, padded, strict=True)]
                denominator = denominator * (node_m - node_j)
        weights.append(sum(c * b_k for c, b_k in zip(poly, b, strict=False)) / denominator)
    return weights


def _unipc_weights(table: dict[str, jax.Array], corrector: bool) -> jax.Array:
    """Returns [N, 3] weights w_m = a_m / r_m on D_m = m_(-m) - m0 (Zhao et al. 2023, bh2).

    Data prediction: x_s = (sigma_s/sigma_t) x_t + alpha_s (1 - e^-h) (m0 + sum_m w_m D_m), i.e.
    B(h) = 1 - e^-h (bh2: e^h - 1 taken at -h, up to sign). The previous points' nodes
    r_m = (lambda_(i-m) - lambda_i) / h (and r = 1 for the corrector's new point) satisfy the
    order conditions sum_m a_m r_m^(k-1) = k! h phi_(k+1)(-h) / B(h), k = 1..#terms; one term
    uses their h -> 0 limit a = 1/2, as UniPC does with bh2. Columns: m_(i-1), m_(i-2), new point.
    """
    h, zero = table["h"], jnp.zeros_like(table["h"])
    b = [math.factorial(k) * h * _phi(k + 1, h) / (1.0 - table["ratio"]) for k in (1, 2, 3)]
    node1, node2, one = -table["r1"], -(table["r1"] + table["r2"]), jnp.ones_like(h)
    if corrector:  # UniC-q: q - 1 previous points and the new one
        a2 = _lagrange_weights([node1, one], b[:2])
        a3 = _lagrange_weights([node1, node2, one], b)
        by_order = [
            [zero, zero, jnp.full_like(h, 0.5)],
            [a2[0] / node1, zero, a2[1]],
            [a3[0] / node1, a3[1] / node2, a3[2]],
        ]
    else:  # UniP-q: q - 1 previous points
        a3 = _lagrange_weights([node1, node2], b[:2])
        by_order = [
            [zero, zero, zero],
            [0.5 / node1, zero, zero],
            [a3[0] / node1, a3[1] / node2, zero],
        ]
    order = table["order"]
    columns = [
        jnp.select([order == 1, order == 2], [w1, w2], w3)
        for w1, w2, w3 in zip(*by_order, strict=True)
    ]
    return jnp.stack(columns, axis=-1)  # [N, 3]


def _shift(values: jax.Array) -> jax.Array:
    """Returns values of the previous step along axis 0 (the first row repeated)."""
    return jnp.concatenate([values[:1], values[:-1]])


def sample_unipc(
    denoise_fn: DenoiseFn,
    grid: NoiseGrid,
    shape: tuple[int, ...],
    key: jax.Array,
    *,
    order: int = 2,
    return_every: int = 0,
    noise: jax.Array | None = None,
) -> dict:
    """Returns {"sample", "nfe": N, "intermediates"?} by UniPC (UniP-p + UniC-p, data prediction).

    Zhao et al. 2023: the model output at each predicted point corrects that point (UniC, order
    p + 1) before the next prediction, at no extra evaluation; the corrector is not applied after
    the final step. Intermediates are the predicted (uncorrected) points.
    """
    _check_order("unipc", order)
    x = _initial_x(grid, shape, key, noise)
    steps = _step_table(grid, x.dtype, order)
    x_coef = steps["sigma_s"] / steps["sigma_t"]
    m_coef = steps["alpha_s"] * (1.0 - steps["ratio"])
    table = {
        "i": steps["i"],
        "x_coef": x_coef,
        "m_coef": m_coef,
        "w_p": _unipc_weights(steps, corrector=False),  # [N, 3]
        # The corrector of point i redoes step i - 1 with that step's coefficients.
        "x_coef_c": _shift(x_coef),
        "m_coef_c": _shift(m_coef),
        "w_c": _shift(_unipc_weights(steps, corrector=True)),  # [N, 3]
    }

    def step(carry, row):
        x, x_corrected_prev, (m1, m2, m3) = carry
        m0, _ = denoise_fn(x, row["i"])
        # UniC on point i: base x_(i-1)^c, m_(i-1), differences to m_(i-2), m_(i-3) and m_i.
        w = row["w_c"]
        data = m1 + w[0] * (m2 - m1) + w[1] * (m3 - m1) + w[2] * (m0 - m1)
        corrected = row["x_coef_c"] * x_corrected_prev + row["m_coef_c"] * data
        x = jnp.where(row["i"] > 0, corrected, x)
        # UniP from the corrected point: base x_i^c, m_i, differences to m_(i-1), m_(i-2).
        w = row["w_p"]
        data = m0 + w[0] * (m1 - m0) + w[1] * (m2 - m0)
        return row["x_coef"] * x + row["m_coef"] * data, x, (m0, m1, m2)

    zeros = jnp.zeros_like(x)
    return _run(step, (x, zeros, (zeros, zeros, zeros)), table, return_every, grid.num_steps)


def _ve_table(grid: NoiseGrid, dtype) -> dict[str, jax.Array]:
    """Returns the step table plus sigma_ve = sigma / alpha at both ends (Karras et al. 2022)."""
    table = _step_table(grid, dtype)
    table["ve_t"] = table["sigma_t"] / table["alpha_t"]
    table["ve_s"] = table["sigma_s"] / table["alpha_s"]
    return table


def sample_euler(
    denoise_fn: DenoiseFn,
    grid: NoiseGrid,
    shape: tuple[int, ...],
    key: jax.Array,
    *,
    return_every: int = 0,
    noise: jax.Array | None = None,
) -> dict:
    """Returns {"sample", "nfe": N, "intermediates"?} by Euler on the PF-ODE in VE coordinates."""
    x = _initial_x(grid, shape, key, noise)

    def step(carry, row):
        x = carry[0]
        _, eps = denoise_fn(x, row["i"])
        # Karras et al. 2022 eq. 1 / Algorithm 1 line 5 for y = x / alpha: dy/dsigma_ve = eps.
        y = x / row["alpha_t"] + (row["ve_s"] - row["ve_t"]) * eps
        return (row["alpha_s"] * y,)

    return _run(step, (x,), _ve_table(grid, x.dtype), return_every, grid.num_steps)


def sample_heun(
    denoise_fn: DenoiseFn,
    grid: NoiseGrid,
    shape: tuple[int, ...],
    key: jax.Array,
    *,
    return_every: int = 0,
    noise: jax.Array | None = None,
) -> dict:
    """Returns {"sample", "nfe": 2N - 1, "intermediates"?} by Heun (Karras et al. 2022, Alg. 1)."""
    x = _initial_x(grid, shape, key, noise)
    table = _ve_table(grid, x.dtype)
    table["last"] = table["i"] == grid.num_steps - 1

    def step(carry, row):
        x = carry[0]
        _, eps = denoise_fn(x, row["i"])
        y = x / row["alpha_t"]
        dsigma = row["ve_s"] - row["ve_t"]
        y_euler = y + dsigma * eps  # Algorithm 1, line 5

        def correct(y_euler):
            # Lines 7-8: second-order correction, skipped on the step to sigma = 0 (line 6).
            _, eps_next = denoise_fn(row["alpha_s"] * y_euler, row["i"] + 1)
            return y + dsigma * 0.5 * (eps + eps_next)

        y_next = jax.lax.cond(row["last"], lambda y_e: y_e, correct, y_euler)
        return (row["alpha_s"] * y_next,)

    return _run(step, (x,), table, return_every, nfe=2 * grid.num_steps - 1)


def sample_euler_ancestral(
    denoise_fn: DenoiseFn,
    grid: NoiseGrid,
    shape: tuple[int, ...],
    key: jax.Array,
    *,
    eta: float = 1.0,
    return_every: int = 0,
    noise: jax.Array | None = None,
) -> dict:
    """Returns {"sample", "nfe": N, "intermediates"?} by Euler ancestral in VE coordinates.

    Each step is an Euler step (Karras et al. 2022 eq. 1) to sigma_down followed by fresh noise of
    std sigma_up, with sigma_up^2 = eta^2 sigma_s^2 (sigma_t^2 - sigma_s^2) / sigma_t^2 and
    sigma_down^2 = sigma_s^2 - sigma_up^2 (VE sigmas): at eta = 1 the DDPM posterior step.
    """
    init_key, step_key = jax.random.split(key)
    x = _initial_x(grid, shape, init_key, noise)
    table = _ve_table(grid, x.dtype)
    ve_t, ve_s = table["ve_t"], table["ve_s"]
    ve_up = jnp.minimum(ve_s, eta * ve_s * jnp.sqrt(jnp.maximum(1.0 - (ve_s / ve_t) ** 2, 0.0)))
    table["ve_up"] = ve_up
    table["ve_down"] = jnp.sqrt(jnp.maximum(ve_s**2 - ve_up**2, 0.0))

    def step(carry, row):
        x = carry[0]
        _, eps = denoise_fn(x, row["i"])
        z = _step_noise(step_key, row["i"], x)
        y = x / row["alpha_t"] + (row["ve_down"] - row["ve_t"]) * eps + row["ve_up"] * z
        return (row["alpha_s"] * y,)

    return _run(step, (x,), table, return_every, grid.num_steps)


def sample_ancestral(
    denoise_fn: DenoiseFn,
    grid: NoiseGrid,
    shape: tuple[int, ...],
    key: jax.Array,
    *,
    return_every: int = 0,
    noise: jax.Array | None = None,
) -> dict:
    """Returns {"sample", "nfe": N, "intermediates"?} by ancestral steps x_s ~ q(x_s | x_t, x0).

    The posterior of Ho et al. 2020 eqs. 6-7 for any (alpha, sigma): with alpha_ts = alpha_t /
    alpha_s and sigma_ts^2 = sigma_t^2 - alpha_ts^2 sigma_s^2, mean = alpha_ts sigma_s^2 /
    sigma_t^2 x_t + alpha_s sigma_ts^2 / sigma_t^2 x0 and variance sigma_ts^2 sigma_s^2 / sigma_t^2
    (fixed_small); the step to sigma = 0 returns x0.
    """
    init_key, step_key = jax.random.split(key)
    x = _initial_x(grid, shape, init_key, noise)
    table = _step_table(grid, x.dtype)
    # sigma_ts^2 / sigma_t^2 = 1 - e^-2h, written with the ratio e^-h to avoid cancellation.
    table["kept"] = 1.0 - table["ratio"] ** 2

    def step(carry, row):
        x = carry[0]
        x0, _ = denoise_fn(x, row["i"])
        mean = (
            row["sigma_s"] * row["ratio"] / row["sigma_t"] * x + row["alpha_s"] * row["kept"] * x0
        )
        z = _step_noise(step_key, row["i"], x)
        return (mean + row["sigma_s"] * jnp.sqrt(row["kept"]) * z,)

    return _run(step, (x,), table, return_every, grid.num_steps)


_SAMPLER_FNS = {
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_3m": sample_dpmpp_3m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "unipc": sample_unipc,
    "euler": sample_euler,
    "heun": sample_heun,
    "euler_ancestral": sample_euler_ancestral,
    "ancestral": sample_ancestral,
}


def sample(
    name: str,
    denoise_fn: DenoiseFn,
    grid: NoiseGrid,
    shape: tuple[int, ...],
    key: jax.Array,
    **options,
) -> dict:
    """Returns sampler `name`'s {"sample" [B, H, W, C], "nfe", "intermediates"?}.

    "nfe" counts model calls: classifier-free guidance as one call on a doubled batch counts 1.
    options: return_every, noise, order (SOLVER_ORDERS; None means the default), eta (ddim,
    euler_ancestral).
    """
    if name not in SAMPLERS:
        raise ValueError(f"eval.sampler={name!r} is not one of {', '.join(SAMPLERS)}.")
    if options.get("order", 0) is None:
        options.pop("order")
    if "order" in options and name not in SOLVER_ORDERS:
        raise ValueError(
            f"eval.solver_order={options['order']} applies only to {', '.join(SOLVER_ORDERS)}, "
            f"not to eval.sampler={name!r}."
        )
    return _SAMPLER_FNS[name](denoise_fn, grid, shape, key, **options)
