"""Tests for diffax.schedules against closed forms and improved-diffusion's respacing semantics."""

import numpy as np
import pytest

from diffax import schedules


@pytest.mark.parametrize("num_timesteps", [1000, 4000])
def test_linear_schedule_endpoints_scale_with_1000_over_t(num_timesteps):
    betas = schedules.get_named_beta_schedule("linear", num_timesteps)
    scale = 1000 / num_timesteps
    assert betas.dtype == np.float64 and betas.shape == (num_timesteps,)
    np.testing.assert_allclose(betas[0], scale * 1e-4, rtol=1e-12)
    np.testing.assert_allclose(betas[-1], scale * 0.02, rtol=1e-12)
    np.testing.assert_allclose(np.diff(betas), np.diff(betas)[0], rtol=1e-9)


def test_linear_schedule_for_1000_steps_is_ho_et_al():
    np.testing.assert_allclose(
        schedules.get_named_beta_schedule("linear", 1000), np.linspace(1e-4, 0.02, 1000)
    )


@pytest.mark.parametrize("num_timesteps", [100, 4000])
def test_cosine_alpha_bar_matches_nichol_dhariwal_eq17(num_timesteps):
    betas = schedules.get_named_beta_schedule("cosine", num_timesteps)
    assert betas.dtype == np.float64 and betas.shape == (num_timesteps,)
    assert np.all(betas > 0) and np.all(betas <= 0.999)
    # Eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2).
    f = lambda step: np.cos((step / num_timesteps + 0.008) / 1.008 * np.pi / 2) ** 2
    steps = np.arange(1, num_timesteps + 1)
    expected = f(steps) / f(0)
    alphas_cumprod = np.cumprod(1.0 - betas)
    unclipped = betas < 0.999
    assert unclipped[:-1].all() and not unclipped[-1]  # only the final beta (f(T) = 0) is clipped
    np.testing.assert_allclose(alphas_cumprod[unclipped], expected[unclipped], rtol=1e-9)


def test_betas_for_alpha_bar_clips_at_max_beta():
    betas = schedules.betas_for_alpha_bar(4, lambda t: 1.0 - t, max_beta=0.5)
    # 1 - abar(t2)/abar(t1) for abar = 1 - t: 1/4, 1/3, 1/2, 1 -> clipped to 0.5.
    np.testing.assert_allclose(betas, [0.25, 1 / 3, 0.5, 0.5])


def test_unknown_schedule_raises_naming_allowed_names():
    with pytest.raises(ValueError, match="'quadratic'.*'linear'.*'cosine'"):
        schedules.get_named_beta_schedule("quadratic", 10)


def test_space_timesteps_sections_of_300_steps():
    kept = schedules.space_timesteps(300, "10,15,20")
    assert len(kept) == 45
    sections = [sorted(k for k in kept if lo <= k < lo + 100) for lo in (0, 100, 200)]
    assert [len(s) for s in sections] == [10, 15, 20]
    # Every section keeps both of its ends.
    assert [(s[0], s[-1]) for s in sections] == [(0, 99), (100, 199), (200, 299)]
    # 10 steps over 100 with both ends: stride 99 / 9 = 11.
    assert sections[0] == list(range(0, 100, 11))
    # 20 steps over 100: positions round(j * 99 / 19).
    assert sections[2] == [200 + round(j * 99 / 19) for j in range(20)]


def test_space_timesteps_accepts_a_list_and_uneven_sections():
    kept = schedules.space_timesteps(10, [2, 3])
    assert kept == {0, 4, 5, 7, 9}
    # 7 steps in 3 sections: sizes 3, 2, 2 (the remainder goes to the first sections).
    assert schedules.space_timesteps(7, [3, 2, 2]) == set(range(7))


def test_space_timesteps_single_count_keeps_first_and_last_step():
    kept = sorted(schedules.space_timesteps(1000, "250"))
    assert len(kept) == 250 and kept[0] == 0 and kept[-1] == 999


def test_space_timesteps_ddim_uses_an_exact_integer_stride():
    assert schedules.space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert schedules.space_timesteps(1000, "ddim1000") == set(range(1000))
    kept = schedules.space_timesteps(4000, "ddim100")
    assert kept == set(range(0, 4000, 40))


@pytest.mark.parametrize(
    "spec, num_timesteps",
    [
        ("ddim7", 10),  # no stride gives 7 of 10 steps
        ("ddimx", 100),
        ("ddim", 100),
        ("abc", 100),
        ("10,,5", 100),
        ("", 100),
        ("0", 100),
        ("-3", 100),
        ("200", 100),
        ("60,60", 100),  # 60 > section size 50
    ],
)
def test_space_timesteps_rejects_malformed_strings_naming_them(spec, num_timesteps):
    with pytest.raises(ValueError) as err:
        schedules.space_timesteps(num_timesteps, spec)
    assert repr(spec) in str(err.value)
