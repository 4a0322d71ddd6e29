"""Super-resolution by concatenation: the low-resolution conditioning image, its noise augmentation,
and the figures SR is judged by (PSNR, SSIM, against bicubic upsampling).

SR3 (Saharia et al. 2021) and ADM's upsampler (Dhariwal & Nichol 2021, sec. 5) feed the
low-resolution image, upsampled to the output size, to the denoiser as extra input channels. Noise
conditioning augmentation (Ho et al. 2022, Cascaded Diffusion Models, sec. 3.2; Saharia et al.
2022, Imagen, sec. 2.5) corrupts that image by a forward-diffusion step of a random level s and
gives s to the model as an input, so that a cascade can sample its upsampler on a base model's
imperfect outputs at a chosen level. Pure functions of NHWC arrays in [-1, 1].
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

# Kernels for upsampling the conditioning image (jax.image.resize methods).
UPSAMPLE_METHODS = ("nearest", "linear", "cubic")


def downsample(images: jax.Array, low_res_size: int) -> jax.Array:
    """Returns `[B, h, h, C]` box-filtered (area-averaged) copies of `[B, H, H, C]` images.

    The low-resolution training inputs of SR3 and ADM are made from the high-resolution ones;
    an area average is the anti-aliased downsampling for integer factors (h must divide H).
    """
    b, height, width, c = images.shape
    if height % low_res_size or width % low_res_size:
        raise ValueError(f"low_res_size={low_res_size} must divide the image size {height}")
    fh, fw = height // low_res_size, width // low_res_size
    blocks = images.reshape(b, low_res_size, fh, low_res_size, fw, c)
    return jnp.mean(blocks, axis=(2, 4))


def upsample(low_res: jax.Array, image_size: int, method: str = "linear") -> jax.Array:
    """Returns `[B, image_size, image_size, C]`: the low-resolution images resized up."""
    b, _, _, c = low_res.shape
    return jax.image.resize(low_res, (b, image_size, image_size, c), method=method)


def augment(x: jax.Array, level: jax.Array, noise: jax.Array) -> jax.Array:
    """Returns cos(pi s / 2) x + sin(pi s / 2) noise: a variance-preserving forward step of level
    s in [0, 1] per example (`level` `[B]`); s = 0 leaves x as it is, s = 1 is pure noise."""
    angle = 0.5 * math.pi * level.astype(jnp.float32)[:, None, None, None]
    return jnp.cos(angle) * x + jnp.sin(angle) * noise


def conditioning(
    images: jax.Array,
    key: jax.Array,
    *,
    low_res_size: int,
    aug_level: float | jax.Array,
    random_level: bool,
    method: str = "linear",
    embed_level: bool = True,
) -> dict[str, jax.Array]:
    """Returns the model's conditioning inputs for high-resolution `images` `[B, H, W, C]`:
    {"concat": the downsampled, upsampled and augmented images `[B, H, W, C]`, "aug_level": s
    `[B]`, absent unless embed_level}. Training draws s ~ U[0, aug_level] per example
    (random_level=True); evaluation and sampling use s = aug_level."""
    low = downsample(images, low_res_size)
    return conditioning_from_low_res(
        low, key, image_size=images.shape[1], aug_level=aug_level, random_level=random_level,
        method=method, embed_level=embed_level,
    )  # fmt: skip


def conditioning_from_low_res(
    low_res: jax.Array,
    key: jax.Array,
    *,
    image_size: int,
    aug_level: float | jax.Array,
    random_level: bool = False,
    method: str = "linear",
    embed_level: bool = True,
) -> dict[str, jax.Array]:
    """Returns the conditioning inputs (see `conditioning`) for given low-resolution images
    `[B, h, h, C]`, e.g. a base model's samples in a cascade."""
    level_key, noise_key = jax.random.split(key)
    batch = low_res.shape[0]
    level = jnp.full((batch,), aug_level, jnp.float32)
    if random_level:
        level = level * jax.random.uniform(level_key, (batch,))
    up = upsample(low_res.astype(jnp.float32), image_size, method)
    noise = jax.random.normal(noise_key, up.shape, up.dtype)
    concat = augment(up, level, noise)
    return {"concat": concat, "aug_level": level} if embed_level else {"concat": concat}


def psnr(x: jax.Array, y: jax.Array, data_range: float = 2.0) -> jax.Array:
    """Returns the peak signal-to-noise ratio in dB per example `[B]` (images in [-1, 1]: range 2);
    identical images give +inf."""
    mse = jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), axis=(1, 2, 3))
    return 10.0 * jnp.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    """Returns the normalised 1-D Gaussian window of SSIM."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    window = np.exp(-0.5 * (offsets / sigma) ** 2)
    return window / window.sum()


def ssim(x: jax.Array, y: jax.Array, data_range: float = 2.0) -> jax.Array:
    """Returns the structural similarity per example `[B]` (Wang et al. 2004), mean over channels.

    The paper's 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, over the valid
    positions; images smaller than 11 pixels use a window as large as the image (its sigma
    scaled alike), so an 8x8 digit gets one 8x8 window per channel.
    """
    size = min(11, x.shape[1], x.shape[2])
    w = jnp.asarray(_gaussian_window(size, 1.5 * size / 11), jnp.float32)
    kernel = jnp.outer(w, w)[:, :, None, None]  # [k, k, 1, 1], applied per channel.

    def filt(z):  # [B, H, W, C] -> [B, H-k+1, W-k+1, C]
        b, h, wd, c = z.shape
        planes = jnp.moveaxis(z, 3, 1).reshape(b * c, h, wd, 1)
        out = jax.lax.conv_general_dilated(
            planes, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jnp.moveaxis(out.reshape(b, c, *out.shape[1:3]), 1, 3)

    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x**2
    var_y = filt(y * y) - mu_y**2
    cov = filt(x * y) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return jnp.mean(index, axis=(1, 2, 3))
