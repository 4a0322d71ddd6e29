"""Beta schedules and timestep respacing for Gaussian diffusion (NumPy, float64)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

BETA_SCHEDULES = ("linear", "cosine")


def betas_for_alpha_bar(
    num_timesteps: int, alpha_bar_fn: Callable[[float], float], max_beta: float = 0.999
) -> np.ndarray:
    """Returns float64 betas [T] with beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta)."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}.")
    betas = []
    for i in range(num_timesteps):
        t1 = i / num_timesteps
        t2 = (i + 1) / num_timesteps
        betas.append(min(1.0 - alpha_bar_fn(t2) / alpha_bar_fn(t1), max_beta))
    return np.asarray(betas, dtype=np.float64)


def cosine_alpha_bar(t: float, s: float = 0.008) -> float:
    """Returns the cosine alpha_bar at continuous time t in [0, 1] (Nichol & Dhariwal eq. 17)."""
    return math.cos((t + s) / (1.0 + s) * math.pi / 2.0) ** 2


def get_named_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """Returns float64 betas [T] for "linear" (Ho et al., scaled by 1000/T) or "cosine"."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}.")
    if name == "linear":
        # Ho et al. 2020 use linspace(1e-4, 0.02) for T=1000; scaling by 1000/T keeps the
        # endpoints' total noise comparable for other T (improved-diffusion convention).
        scale = 1000.0 / num_timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    if name == "cosine":
        # max_beta=0.999 avoids the singularity of beta near t=T (Nichol & Dhariwal sec. 3.2).
        return betas_for_alpha_bar(num_timesteps, cosine_alpha_bar, max_beta=0.999)
    raise ValueError(
        f"Unknown beta schedule {name!r}; allowed names are {', '.join(map(repr, BETA_SCHEDULES))}."
    )


def _parse_section_counts(num_timesteps: int, section_counts: str) -> list[int]:
    """Returns the integer counts of a comma-separated string such as "10,15,20"."""
    accepted = 'accepted forms are "ddimN" or comma-separated positive integers such as "10,15,20"'
    try:
        counts = [int(part) for part in section_counts.split(",")]
    except ValueError:
        raise ValueError(
            f"Cannot parse timestep respacing {section_counts!r} for {num_timesteps} steps; "
            f"{accepted}."
        ) from None
    return counts


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> set[int]:
    """Returns the set of kept timesteps in 0..T-1, improved-diffusion respacing semantics.

    "ddimN" keeps range(0, T, stride) for the stride giving exactly N steps; otherwise the
    process is cut into len(counts) equal sections and each section keeps its count of evenly
    strided steps, including both ends of the section.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}.")
    spec = section_counts
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            suffix = section_counts[len("ddim") :]
            if not suffix.isdigit():
                raise ValueError(
                    f"Cannot parse timestep respacing {section_counts!r}: after 'ddim' a positive "
                    "integer step count is expected, e.g. 'ddim50'."
                )
            desired = int(suffix)
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(
                f"Timestep respacing {section_counts!r}: no integer stride gives exactly {desired} "
                f"steps out of {num_timesteps}; pick a count of the form ceil(T / stride)."
            )
        section_counts = _parse_section_counts(num_timesteps, section_counts)
    counts = [int(c) for c in section_counts]
    if not counts:
        raise ValueError(f"Timestep respacing {spec!r} is empty; give at least one step count.")
    if len(counts) > num_timesteps:
        raise ValueError(
            f"Timestep respacing {spec!r} has {len(counts)} sections but the process has only "
            f"{num_timesteps} steps."
        )
    size_per = num_timesteps // len(counts)
    extra = num_timesteps % len(counts)
    start = 0
    kept: list[int] = []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count < 1:
            raise ValueError(
                f"Timestep respacing {spec!r}: every section count must be a positive integer, "
                f"got {count}."
            )
        if count > size:
            raise ValueError(
                f"Timestep respacing {spec!r}: cannot take {count} steps from a section of "
                f"{size} steps (T={num_timesteps} split into {len(counts)} sections)."
            )
        stride = 1.0 if count == 1 else (size - 1) / (count - 1)
        # Accumulate the fractional index (rather than j * stride) so that rounding at
        # half-integers matches improved-diffusion's respacing step for step.
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return set(kept)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Returns float64 betas [T] whose last alpha_bar is 0 and first unchanged (Lin et al. 2024).

    Algorithm 1 of "Common Diffusion Noise Schedules and Sample Steps are Flawed": shift
    sqrt(alpha_bar) so its last value is 0, scale it so its first value is unchanged, and rebuild
    betas from the ratios of consecutive alpha_bar; the last beta is then 1. With a terminal SNR of
    0, x_T carries no signal and eps-prediction cannot recover x0 there (x0 = (x_T - eps) / 0):
    train with mean_type "v" (their choice) or "x0".
    """
    betas = np.asarray(betas, dtype=np.float64)
    sqrt_alphas_cumprod = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_alphas_cumprod[0], sqrt_alphas_cumprod[-1]
    sqrt_alphas_cumprod = (sqrt_alphas_cumprod - last) * first / (first - last)
    alphas_cumprod = sqrt_alphas_cumprod**2
    alphas = np.append(alphas_cumprod[0], alphas_cumprod[1:] / alphas_cumprod[:-1])
    return 1.0 - alphas
