"""Tests for diffax.solvers against closed forms for Gaussian data x0 ~ N(MEAN, STD^2).

For such data E[x0 | x_t] and E[eps | x_t] are affine in x_t, so the exact denoiser is known, the
probability-flow ODE has a closed-form solution and the stochastic samplers must reproduce the data
moments. Noise levels are read back from each grid, so the exact model and the reference use the
same numbers as the sampler.
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffax import diffusion, sampling, schedules, solvers

MEAN, STD = 0.3, 0.5
KEY = jax.random.PRNGKey(0)  # unused where the start noise is given and steps are deterministic


@functools.cache
def _cosine_process(num_timesteps: int = 1000) -> diffusion.GaussianDiffusion:
    return diffusion.GaussianDiffusion.create(
        schedules.get_named_beta_schedule("cosine", num_timesteps)
    )


def _grid_tables(grid: solvers.NoiseGrid, num_timesteps: int):
    """Returns alpha, sigma [T] indexed by model_t, filled from the grid's model points."""
    index = grid.model_t[:-1]
    alpha = jnp.zeros(num_timesteps, grid.alpha.dtype).at[index].set(grid.alpha[:-1])
    sigma = jnp.zeros(num_timesteps, grid.sigma.dtype).at[index].set(grid.sigma[:-1])
    return alpha, sigma


def _exact_models(grid: solvers.NoiseGrid, num_timesteps: int = 1000) -> dict:
    """Returns exact eps / x0 / v model_fns for x0 ~ N(MEAN, STD^2) at the grid's noise levels."""
    alpha_table, sigma_table = _grid_tables(grid, num_timesteps)

    def levels(x, t):
        shape = (-1,) + (1,) * (x.ndim - 1)
        return alpha_table[t].reshape(shape), sigma_table[t].reshape(shape)

    def eps_model(x, t):
        alpha, sigma = levels(x, t)
        return sigma * (x - alpha * MEAN) / (alpha**2 * STD**2 + sigma**2)

    def x0_model(x, t):
        alpha, sigma = levels(x, t)
        return MEAN + alpha * STD**2 * (x - alpha * MEAN) / (alpha**2 * STD**2 + sigma**2)

    def v_model(x, t):
        alpha, sigma = levels(x, t)
        return alpha * eps_model(x, t) - sigma * x0_model(x, t)

    return {"eps": eps_model, "x0": x0_model, "v": v_model}


def _pf_ode_solution(alpha, sigma, z):
    """Returns x on the PF-ODE trajectory whose standardized value is z (constant along it)."""
    return alpha * MEAN + jnp.sqrt(alpha**2 * STD**2 + sigma**2) * z


# ----------------------------------------------------------------------------- grids and spacing


def test_discrete_grid_of_respaced_process_matches_kept_steps_of_full_process():
    d = _cosine_process()
    kept = solvers.spacing_timesteps(d, 25, "ddim")
    respaced = d.respace(kept)
    from_full = solvers.grid_from_discrete(d, kept)
    from_respaced = solvers.grid_from_discrete(respaced, np.arange(24, -1, -1))
    chex.assert_trees_all_close(from_full.alpha, from_respaced.alpha, rtol=1e-6)
    chex.assert_trees_all_close(from_full.sigma, from_respaced.sigma, rtol=1e-5)
    np.testing.assert_array_equal(from_full.model_t[:-1], kept)
    np.testing.assert_array_equal(from_respaced.model_t[:-1], kept)
    abar = np.cumprod(1.0 - schedules.get_named_beta_schedule("cosine", 1000))[kept]
    np.testing.assert_allclose(from_full.sigma[:-1], np.sqrt(1.0 - abar), rtol=1e-6)
    assert from_full.num_steps == 25
    assert (float(from_full.alpha[-1]), float(from_full.sigma[-1])) == (1.0, 0.0)


SPACING_CASES = [
    (spacing, 250 if (spacing, num_steps) == ("ddim", 200) else num_steps)  # no stride gives 200
    for spacing in solvers.SPACINGS
    for num_steps in (7, 50, 200, 1000)
] + [("10,15,25", 50)]


@pytest.mark.parametrize("spacing, num_steps", SPACING_CASES)
def test_spacings_return_distinct_descending_valid_indices(spacing, num_steps):
    d = _cosine_process()
    steps = solvers.spacing_timesteps(d, num_steps, spacing)
    assert steps.shape == (num_steps,)
    assert np.all(np.diff(steps) < 0) and steps[-1] >= 0 and steps[0] <= 999
    assert steps[-1] == 0
    if spacing in ("uniform", "logsnr", "respace"):
        assert steps[0] == 999


def _linear_process_log_snr() -> tuple[diffusion.GaussianDiffusion, np.ndarray]:
    """Returns the linear-beta process (T = 1000) and its float64 log-SNR [T]."""
    betas = schedules.get_named_beta_schedule("linear", 1000)
    abar = np.cumprod(1.0 - betas)
    return diffusion.GaussianDiffusion.create(betas), np.log(abar / (1.0 - abar))


def test_karras_spacing_is_eq5_with_rho_7_snapped_to_nearest_timestep():
    d, log_snr = _linear_process_log_snr()
    sigma = np.exp(-0.5 * log_snr)  # sqrt((1 - abar) / abar)
    num_steps, rho = 10, 7.0
    sigma_max = min(sigma[-1], 80.0)  # Karras et al.'s sigma_max for every model (Table 1).
    inv_min, inv_max = sigma[0] ** (1 / rho), sigma_max ** (1 / rho)
    expected = [(inv_max + i / (num_steps - 1) * (inv_min - inv_max)) ** rho for i in range(10)]
    np.testing.assert_allclose(solvers.karras_sigmas(sigma[0], sigma_max, num_steps), expected)
    nearest = [np.argmin(np.abs(np.log(sigma) - np.log(s))) for s in expected]
    np.testing.assert_array_equal(solvers.spacing_timesteps(d, num_steps, "karras"), nearest)


def test_logsnr_spacing_snaps_uniform_log_snr_targets():
    d, log_snr = _linear_process_log_snr()
    targets = np.linspace(log_snr[-1], log_snr[0], 12)
    nearest = [np.argmin(np.abs(log_snr - v)) for v in targets]
    np.testing.assert_array_equal(solvers.spacing_timesteps(d, 12, "logsnr"), nearest)


def test_snapping_ties_are_moved_to_the_nearest_free_timesteps():
    # On the cosine process 30 log-SNR-uniform targets crowd the last steps (the clipped last beta
    # puts sigma_max near 2e4): several snap to 999 and are moved to free neighbours.
    d = _cosine_process()
    log_sigma = np.log(np.asarray(d.sqrt_recipm1_alphas_cumprod, np.float64))
    targets = np.linspace(log_sigma[-1], log_sigma[0], 200)
    nearest = np.argmin(np.abs(log_sigma[None, :] - targets[:, None]), axis=1)
    assert len(set(nearest.tolist())) < 200  # The naive snap collides.
    steps = solvers.spacing_timesteps(d, 200, "logsnr")
    assert len(set(steps.tolist())) == 200
    assert np.all(np.diff(steps) < 0) and steps[-1] == 0 and steps[0] == 999


def test_karras_spacing_starts_at_sigma_80_on_a_clipped_cosine_process():
    d = _cosine_process()
    sigma = np.asarray(d.sqrt_recipm1_alphas_cumprod, np.float64)
    steps = solvers.spacing_timesteps(d, 10, "karras")
    assert sigma[steps[0]] == sigma[np.argmin(np.abs(np.log(sigma) - np.log(80.0)))]
    assert np.all(np.diff(steps) < 0) and steps[-1] == 0


@pytest.mark.parametrize(
    "num_steps, spacing, match",
    [
        (2000, "uniform", "eval.sample_steps=2000 exceeds diffusion.num_timesteps=1000"),
        (0, "logsnr", "eval.sample_steps=0 must be at least 1"),
        (10, "quadratic", "eval.sample_spacing='quadratic' is not one of uniform, logsnr, karras"),
        (44, "10,15,20", "keeps 45 steps, not eval.sample_steps=44"),
    ],
)
def test_invalid_spacing_raises_naming_the_field(num_steps, spacing, match):
    with pytest.raises(ValueError, match=match):
        solvers.spacing_timesteps(_cosine_process(), num_steps, spacing)


def test_dispatcher_rejects_unknown_sampler_and_unsupported_order():
    grid = solvers.grid_from_alpha_sigma([0.5], [0.8], [3])
    args = (lambda x, i: (x, x), grid, (1, 1, 1, 1), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="eval.sampler='dpm' is not one of ddim, dpmpp_2m"):
        solvers.sample("dpm", *args)
    with pytest.raises(ValueError, match="eval.solver_order=4 is not one of 1, 2, 3 for dpmpp_3m"):
        solvers.sample("dpmpp_3m", *args, order=4)
    with pytest.raises(ValueError, match="eval.solver_order=3 is not one of 1, 2 for dpmpp_2m"):
        solvers.sample("dpmpp_2m", *args, order=3)
    with pytest.raises(ValueError, match="eval.solver_order=2 applies only to"):
        solvers.sample("heun", *args, order=2)
    assert set(solvers.SOLVER_ORDERS) <= set(solvers.SAMPLERS)


# ----------------------------------------------------------------------------- denoiser


def test_denoiser_clips_x0_and_rederives_eps():
    grid = solvers.grid_from_alpha_sigma([0.6], [0.8], [5])
    denoise = solvers.denoiser(lambda x, t: -2.0 * x, grid, "x0", False, clip_denoised=True)
    x = jnp.linspace(-2.0, 2.0, 16).reshape(1, 4, 4, 1)
    x0, eps = denoise(x, 0)
    assert float(jnp.max(jnp.abs(x0))) == 1.0
    chex.assert_trees_all_close(0.6 * x0 + 0.8 * eps, x, atol=1e-6)
    with pytest.raises(ValueError, match="diffusion.mean_type='score'"):
        solvers.denoiser(lambda x, t: x, grid, "score", False)
    with pytest.raises(ValueError, match="needs a model output with 2 channels"):
        solvers.denoiser(lambda x, t: x, grid, "eps", True)(x, 0)


def test_eps_x0_and_v_models_of_one_denoiser_give_the_same_sample():
    d = _cosine_process()
    grid = solvers.grid_from_discrete(d, solvers.spacing_timesteps(d, 10, "logsnr"))
    models = _exact_models(grid)
    shape = (4, 2, 2, 1)
    noise = jax.random.normal(jax.random.PRNGKey(3), shape)

    def run(model_fn, mean_type, learn_sigma=False):
        denoise = solvers.denoiser(model_fn, grid, mean_type, learn_sigma)
        return solvers.sample_dpmpp_2m(denoise, grid, shape, KEY, noise=noise)["sample"]

    reference = run(models["eps"], "eps")
    chex.assert_trees_all_close(run(models["x0"], "x0"), reference, atol=1e-4)
    chex.assert_trees_all_close(run(models["v"], "v"), reference, atol=1e-4)
    # A learned-variance output has 2C channels: the sampler must read only the mean half.
    learned = lambda x, t: jnp.concatenate([models["eps"](x, t), 5.0 + x**2], axis=-1)
    chex.assert_trees_all_close(run(learned, "eps", learn_sigma=True), reference, atol=1e-6)
    # The exact sample of the PF-ODE is MEAN + STD z: a sanity check on the models themselves.
    z = (noise - grid.alpha[0] * MEAN) / jnp.sqrt(grid.alpha[0] ** 2 * STD**2 + grid.sigma[0] ** 2)
    chex.assert_trees_all_close(reference, MEAN + STD * z, atol=0.05)


# ----------------------------------------------------------------------------- equivalences


def test_dpmpp_of_order_one_equals_sampling_ddim_step_for_step():
    d = _cosine_process().respace(schedules.space_timesteps(1000, "ddim25"))
    shape = (2, 4, 4, 1)

    def model_fn(x, t):
        scale = 1.0 + t.reshape(-1, 1, 1, 1) / 1000.0
        return jnp.tanh(1.5 * x) * scale + 0.1 * jnp.sin(3.0 * x)

    noise = jax.random.normal(jax.random.PRNGKey(0), shape)
    expected = sampling.ddim_sample(
        d, model_fn, shape, jax.random.PRNGKey(1), 0.0, False, return_every=5, noise=noise
    )
    grid = solvers.grid_from_discrete(d, np.arange(d.num_timesteps - 1, -1, -1))
    denoise = solvers.denoiser(model_fn, grid, d.mean_type, d.learn_sigma)
    for run in (
        functools.partial(solvers.sample_dpmpp_2m, order=1),
        functools.partial(solvers.sample_dpmpp_3m, order=1),
        solvers.sample_ddim,
        solvers.sample_euler,  # Euler in sigma / alpha is DDIM (Karras et al. 2022, sec. 4)
    ):
        out = run(denoise, grid, shape, jax.random.PRNGKey(1), return_every=5, noise=noise)
        assert out["nfe"] == 25
        chex.assert_shape(out["intermediates"], (5, *shape))
        chex.assert_trees_all_close(out["sample"], expected["sample"], atol=1e-5, rtol=1e-5)
        chex.assert_trees_all_close(
            out["intermediates"], expected["intermediates"], atol=1e-5, rtol=1e-5
        )


# ----------------------------------------------------------------------------- ODE accuracy


def test_pf_ode_closed_form_matches_fine_rk4():
    """The reference solution: along dy/ds = (y - E[x0 | y]) / s with y = x / alpha, s = sigma /
    alpha, (y - MEAN) / sqrt(STD^2 + s^2) is constant; checked here by RK4 in log s in NumPy."""
    abar = np.cumprod(1.0 - schedules.get_named_beta_schedule("cosine", 1000))
    s_start, s_end = np.sqrt(1.0 / abar[900] - 1.0), np.sqrt(1.0 / abar[20] - 1.0)
    y = np.linspace(-3.0, 3.0, 7)

    def dy_dlogs(y, log_s):
        s2 = np.exp(2.0 * log_s)
        x0 = MEAN + STD**2 * (y - MEAN) / (STD**2 + s2)
        return y - x0

    grid = np.linspace(np.log(s_start), np.log(s_end), 2001)
    y_end = y.copy()
    for u, u_next in zip(grid[:-1], grid[1:], strict=True):
        du = u_next - u
        k1 = dy_dlogs(y_end, u)
        k2 = dy_dlogs(y_end + du / 2 * k1, u + du / 2)
        k3 = dy_dlogs(y_end + du / 2 * k2, u + du / 2)
        k4 = dy_dlogs(y_end + du * k3, u_next)
        y_end = y_end + du / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    closed_form = MEAN + (y - MEAN) * np.sqrt((STD**2 + s_end**2) / (STD**2 + s_start**2))
    np.testing.assert_allclose(y_end, closed_form, rtol=1e-10, atol=1e-12)


STEP_COUNTS = (20, 40, 80)


def _error_at_last_model_point(name: str, options: dict, num_steps: int) -> float:
    """Returns max |x - exact| at point N-1 of a float64 run from timestep 900 to timestep 20."""
    d = _cosine_process()
    grid = solvers.grid_from_discrete(d, np.round(np.linspace(900, 20, num_steps)).astype(int))
    denoise = solvers.denoiser(_exact_models(grid)["eps"], grid, "eps", False)
    z = jnp.linspace(-2.0, 2.0, 8, dtype=jnp.float64).reshape(8, 1, 1, 1)
    x_start = _pf_ode_solution(grid.alpha[0], grid.sigma[0], z)

    @jax.jit
    def last_model_point(x_start):
        out = solvers.sample(
            name, denoise, grid, z.shape, KEY, noise=x_start, return_every=1, **options
        )
        return out["intermediates"][num_steps - 2]

    exact = _pf_ode_solution(grid.alpha[num_steps - 1], grid.sigma[num_steps - 1], z)
    return float(jnp.max(jnp.abs(last_model_point(x_start) - exact)))


@pytest.mark.parametrize(
    "name, options, min_slope, max_slope",
    [
        ("ddim", {}, 0.8, 1.3),
        ("euler", {}, 0.8, 1.3),
        ("dpmpp_2m", {}, 1.8, 3.0),
        ("heun", {}, 1.8, 3.0),
        # UniP-2 alone is DPM-Solver++(2M) (slope ~2.1 here); UniC-2 raises it to order 3.
        ("unipc", {"order": 2}, 2.4, 4.0),
        ("dpmpp_3m", {}, 2.6, 5.0),
        ("unipc", {"order": 3}, 2.6, 5.0),
    ],
)
def test_ode_solver_error_falls_at_its_order(name, options, min_slope, max_slope):
    """Error against the closed-form PF-ODE solution falls like N^-order on the cosine process.

    Two choices keep the measurement in the asymptotic regime. (1) The run spans timesteps 900 to
    20, uniform in t: the cosine process's end timesteps are coarse in lambda (the max_beta clip
    makes t = 999 -> 998 a jump of ~3.4, and t = 0 -> 1 one of ~0.4), so steps there could not
    shrink with N. (2) The error is read at the last model point (N-1): the step from there to the
    clean end returns the denoiser's E[x0 | x], which differs from the ODE end point by
    O(sigma_(N-1)^2) whatever N is. Lower-order steps at the start and before the end contribute
    O(h^order) each, as the global error does. float64 keeps round-off below the smallest error.
    """
    with jax.enable_x64(True):
        errors = [_error_at_last_model_point(name, options, n) for n in STEP_COUNTS]
    slope = -np.polyfit(np.log(STEP_COUNTS), np.log(errors), 1)[0]
    assert min_slope <= slope <= max_slope, (slope, errors)


@pytest.mark.parametrize(
    "name, options, first_exact_point",
    [("dpmpp_3m", {}, 2), ("unipc", {"order": 3}, 3)],
)
def test_third_order_solvers_integrate_quadratic_data_predictions_exactly(
    name, options, first_exact_point
):
    """With x0_pred = P(lambda) quadratic and independent of x, the data-prediction ODE has the
    exact solution x(l) = sigma(l) [x_0 / sigma_0 + int_(l_0)^l e^u P(u) du], with antiderivative
    e^u (P - P' + P''). Third-order steps add no error, so once the solver runs at order 3 the
    error only scales with sigma: (x_i - exact_i) / sigma_i is constant until the lower-order final
    steps. (UniPC: its predictor and corrector both reach order 3 from point 3.)"""
    c0, c1, c2 = 0.2, -0.3, 0.05
    with jax.enable_x64(True):
        d = _cosine_process()
        num_steps = 12
        grid = solvers.grid_from_discrete(d, np.round(np.linspace(900, 20, num_steps)).astype(int))
        alpha = np.asarray(grid.alpha, np.float64)[:-1]
        sigma = np.asarray(grid.sigma, np.float64)[:-1]
        lam = np.log(alpha / sigma)
        lam_table = jnp.zeros(1000, jnp.float64).at[grid.model_t[:-1]].set(lam)

        def model_fn(x, t):
            lam_t = lam_table[t].reshape(-1, 1, 1, 1)
            return jnp.broadcast_to(c0 + c1 * lam_t + c2 * lam_t**2, x.shape)

        antiderivative = lambda u: np.exp(u) * (c0 + c1 * u + c2 * u**2 - c1 - 2 * c2 * u + 2 * c2)
        x_start = 0.7
        exact = sigma * (x_start / sigma[0] + antiderivative(lam) - antiderivative(lam[0]))
        denoise = solvers.denoiser(model_fn, grid, "x0", False)
        out = solvers.sample(
            name,
            denoise,
            grid,
            (1, 1, 1, 1),
            KEY,
            noise=jnp.full((1, 1, 1, 1), x_start, jnp.float64),
            return_every=1,
            **options,
        )
        points = np.asarray(out["intermediates"]).reshape(-1)[:-1]  # points 1..N-1
        scaled_error = (points - exact[1:]) / sigma[1:]
    kept = scaled_error[first_exact_point - 1 : -1]  # points first_exact_point..N-2
    np.testing.assert_allclose(kept, kept[0], rtol=1e-7, atol=1e-12)
    assert abs(scaled_error[0]) > 1e-6  # the first-order start is inexact, so kept is not all 0


# ----------------------------------------------------------------------------- stochastic


@pytest.mark.parametrize(
    "name, options",
    [
        ("ancestral", {}),
        ("euler_ancestral", {}),
        ("dpmpp_2m_sde", {}),
        ("ddim", {"eta": 1.0}),
    ],
)
def test_stochastic_sampler_reproduces_gaussian_data_moments(name, options):
    """Mean and std of 20000 samples match the data within 5 standard errors.

    Fixed-small ancestral steps omit the x0 uncertainty of the exact reverse step, which biases
    the std by O(1/N) (about -20 standard errors at N = 100), so all 1000 steps are taken (about
    -2 standard errors of bias).
    """
    d = _cosine_process()
    grid = solvers.grid_from_discrete(d, solvers.spacing_timesteps(d, 1000, "uniform"))
    denoise = solvers.denoiser(_exact_models(grid)["eps"], grid, "eps", False)
    shape = (1250, 4, 4, 1)
    run = jax.jit(lambda key: solvers.sample(name, denoise, grid, shape, key, **options)["sample"])
    samples = np.asarray(run(jax.random.PRNGKey(7)), np.float64).reshape(-1)
    num = samples.size
    assert abs(samples.mean() - MEAN) < 5.0 * STD / math.sqrt(num)
    assert abs(samples.std() - STD) < 5.0 * STD / math.sqrt(2.0 * num)


# ----------------------------------------------------------------------------- guidance

WEIGHTS = np.linspace(-1.0, 1.0, 8).reshape(2, 4, 1)  # [H, W, C] of the classifier


def _log_p_y(x, t, xp=jnp):
    """Returns log p(y = 1 | x_t) [B] of a logistic classifier whose logit shrinks with t."""
    logit = xp.sum(x * WEIGHTS, axis=(1, 2, 3)) / (1.0 + t / 1000.0)
    return -xp.logaddexp(0.0, -logit)


def _guidance_fn(x, t):
    return jax.grad(lambda x: jnp.sum(_log_p_y(x, t)))(x)


def test_guidance_gradient_matches_central_finite_differences():
    d = _cosine_process()
    grid = solvers.grid_from_discrete(d, solvers.spacing_timesteps(d, 10, "uniform"))
    model_fn = _exact_models(grid)["x0"]
    point, scale = 4, 2.0
    unguided = solvers.denoiser(model_fn, grid, "x0", False)
    guided = solvers.denoiser(
        model_fn, grid, "x0", False, guidance_fn=_guidance_fn, guidance_scale=scale
    )
    x = jax.random.normal(jax.random.PRNGKey(5), (3, 2, 4, 1))
    x0, eps = unguided(x, point)
    x0_guided, eps_guided = guided(x, point)
    sigma, alpha = float(grid.sigma[point]), float(grid.alpha[point])
    used = (eps - eps_guided) / (scale * sigma)  # eps_hat = eps - s sigma grad (eq. 14)
    x_np, t = np.asarray(x, np.float64), float(grid.model_t[point])
    delta, fd = 1e-5, np.zeros_like(x_np)
    for index in np.ndindex(*x_np.shape[1:]):
        step = np.zeros_like(x_np)
        step[(slice(None), *index)] = delta
        diff = _log_p_y(x_np + step, t, np) - _log_p_y(x_np - step, t, np)
        fd[(slice(None), *index)] = diff / (2 * delta)
    np.testing.assert_allclose(used, fd, rtol=1e-3, atol=1e-4)
    chex.assert_trees_all_close(alpha * x0_guided + sigma * eps_guided, x, atol=1e-5)
    assert not np.allclose(x0_guided, x0)


def test_zero_guidance_scale_is_bit_identical_and_positive_scale_follows_the_gradient():
    d = _cosine_process()
    grid = solvers.grid_from_discrete(d, solvers.spacing_timesteps(d, 8, "logsnr"))
    model_fn = _exact_models(grid)["x0"]
    shape = (64, 2, 4, 1)
    key = jax.random.PRNGKey(11)

    def run(name, **guidance):
        denoise = solvers.denoiser(model_fn, grid, "x0", False, **guidance)
        return solvers.sample(name, denoise, grid, shape, key)["sample"]

    for name in ("dpmpp_2m", "ancestral"):
        unguided = run(name)
        zero = run(name, guidance_fn=_guidance_fn, guidance_scale=0.0)
        np.testing.assert_array_equal(zero, unguided)
        guided = run(name, guidance_fn=_guidance_fn, guidance_scale=3.0)
        shift = jnp.mean(jnp.sum((guided - unguided) * WEIGHTS, axis=(1, 2, 3)))
        assert float(shift) > 0.1, (name, float(shift))


# ----------------------------------------------------------------------------- compilation


@pytest.mark.parametrize(
    "name, options, stochastic",
    [
        ("ddim", {}, False),
        ("ddim", {"eta": 1.0}, True),
        ("dpmpp_2m", {}, False),
        ("dpmpp_3m", {}, False),
        ("dpmpp_2m_sde", {}, True),
        ("unipc", {"order": 2}, False),
        ("unipc", {"order": 3}, False),
        ("euler", {}, False),
        ("heun", {}, False),
        ("euler_ancestral", {}, True),
        ("ancestral", {}, True),
    ],
)
def test_sampler_compiles_once_counts_model_calls_and_keeps_the_batch_sharded(
    name, options, stochastic
):
    d = _cosine_process()
    num_steps = 6
    grid = solvers.grid_from_discrete(d, solvers.spacing_timesteps(d, num_steps, "logsnr"))
    eps_model = _exact_models(grid)["eps"]
    calls = []

    def counting_model(x, t):
        jax.debug.callback(lambda t0: calls.append(int(t0)), t[0])
        return eps_model(x, t)

    denoise = solvers.denoiser(counting_model, grid, "eps", False)
    shape = (16, 2, 2, 1)
    chex.clear_trace_counter()  # `run` below has the same code in every parametrization

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(noise, key):
        return solvers.sample(
            name, denoise, grid, shape, key, return_every=2, noise=noise, **options
        )

    mesh = Mesh(np.array(jax.devices()), ("batch",))
    sharding = NamedSharding(mesh, PartitionSpec("batch"))
    noise = jax.device_put(jax.random.normal(jax.random.PRNGKey(0), shape), sharding)
    first = run(noise, jax.random.PRNGKey(1))
    jax.block_until_ready(first)
    jax.effects_barrier()
    expected_nfe = 2 * num_steps - 1 if name == "heun" else num_steps
    assert int(first["nfe"]) == expected_nfe == len(calls)
    second = run(noise, jax.random.PRNGKey(2))
    chex.assert_tree_all_finite((first, second))
    chex.assert_shape(first["intermediates"], (num_steps // 2, *shape))
    np.testing.assert_array_equal(first["intermediates"][-1], first["sample"])
    assert first["sample"].sharding.is_equivalent_to(sharding, len(shape))
    assert np.allclose(first["sample"], second["sample"]) != stochastic
