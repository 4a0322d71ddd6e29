"""A small CNN for the 8x8 digits: its penultimate features give a digits Fréchet distance, its
logits the class accuracy of class-conditional samples.

Images are [N, 8, 8, 1] float in [-1, 1], i.e. the load_digits() values v in 0..16 mapped to
v / 16 * 2 - 1, as diffax's input pipeline does. The split is the one of diffax's `digits` TFDS
builder (`diffax.datasets.digits.split_indices()`: RandomState(0).permutation(1797), first 1437
train, last 360 test); `load_digits_split` returns it as arrays.

Recipe (fixed, seeded): conv3x3(32) - ReLU - conv3x3(64) - ReLU - avgpool 2x2 - dense(128) - ReLU
(the 128-d features) - dense(10); AdamW (lr 2e-3 with cosine decay, weight decay 1e-4), batch 128,
400 steps (~36 epochs of 11 shuffled batches), seed 0. It reaches about 99% test accuracy (98.9% to
99.4% over seeds 0-2) in under 10 s on 2 CPU cores.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epy

from diffax.datasets import digits as digits_lib

with epy.lazy_imports():  # scikit-learn (~1 s) only when the classifier reads the digits.
    from sklearn import datasets as sklearn_datasets

NUM_CLASSES = 10
FEATURE_DIM = 128
IMAGE_SHAPE = (8, 8, 1)


class DigitsClassifier(nn.Module):
    """CNN for [B, 8, 8, 1] images in [-1, 1]; returns (features [B, 128], logits [B, 10])."""

    feature_dim: int = FEATURE_DIM

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = jnp.asarray(images, jnp.float32).reshape((-1,) + IMAGE_SHAPE)  # [B, 8, 8, 1]
        x = nn.relu(nn.Conv(32, (3, 3), name="conv1")(x))  # [B, 8, 8, 32]
        x = nn.relu(nn.Conv(64, (3, 3), name="conv2")(x))  # [B, 8, 8, 64]
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))  # [B, 4, 4, 64]
        x = x.reshape((x.shape[0], -1))  # [B, 1024]
        features = nn.relu(nn.Dense(self.feature_dim, name="dense1")(x))  # [B, 128]
        logits = nn.Dense(NUM_CLASSES, name="logits")(features)  # [B, 10]
        return features, logits


@jax.jit
def _apply(params: dict, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    feature_dim = params["dense1"]["bias"].shape[0]  # static under jit
    return DigitsClassifier(feature_dim=feature_dim).apply({"params": params}, images)


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns (train_images [1437, 8, 8, 1], train_labels, test_images [360, ...], test_labels).

    Images are float32 in [-1, 1] (v / 16 * 2 - 1), labels int32; the split is diffax's digits
    TFDS builder's (diffax.datasets.digits.split_indices()).
    """
    bunch = sklearn_datasets.load_digits()
    max_value = float(digits_lib.NUM_LEVELS - 1)
    images = (bunch.images.astype(np.float32) / max_value * 2.0 - 1.0)[..., None]  # [1797, 8, 8, 1]
    labels = bunch.target.astype(np.int32)  # [1797]
    splits = digits_lib.split_indices()
    train, test = splits["train"], splits["test"]
    return images[train], labels[train], images[test], labels[test]


def init_params(seed: int = 0, feature_dim: int = FEATURE_DIM) -> dict:
    """Returns freshly initialised classifier parameters."""
    model = DigitsClassifier(feature_dim=feature_dim)
    return model.init(jax.random.key(seed), jnp.zeros((1,) + IMAGE_SHAPE))["params"]


def _batch_indices(num_examples: int, batch_size: int, num_steps: int, seed: int) -> np.ndarray:
    """Returns [num_steps, batch_size] example indices from consecutive shuffled epochs."""
    rng = np.random.default_rng(seed)
    batches_per_epoch = num_examples // batch_size
    num_epochs = -(-num_steps // batches_per_epoch)
    epochs = [
        rng.permutation(num_examples)[: batches_per_epoch * batch_size] for _ in range(num_epochs)
    ]
    return np.concatenate(epochs).reshape(-1, batch_size)[:num_steps]


def accuracy(params: dict, images: np.ndarray, labels: np.ndarray, batch_size: int = 512) -> float:
    """Returns the fraction of images whose argmax logit equals the label."""
    _, logits = features_and_logits(params, images, batch_size)
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels)))


def train_classifier(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    seed: int = 0,
    num_steps: int = 400,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    weight_decay: float = 1e-4,
    feature_dim: int = FEATURE_DIM,
) -> tuple[dict, float]:
    """Returns (params, test_accuracy in [0, 1]) after the fixed, seeded recipe (module doc)."""
    model = DigitsClassifier(feature_dim=feature_dim)
    params = init_params(seed, feature_dim)
    schedule = optax.cosine_decay_schedule(learning_rate, num_steps)
    optimizer = optax.adamw(schedule, weight_decay=weight_decay)
    images = np.asarray(train_images, np.float32).reshape((-1,) + IMAGE_SHAPE)  # [N, 8, 8, 1]
    labels = np.asarray(train_labels, np.int32)  # [N]
    indices = _batch_indices(images.shape[0], batch_size, num_steps, seed)  # [steps, batch]

    def loss_fn(params, batch_images, batch_labels):
        _, logits = model.apply({"params": params}, batch_images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch_labels).mean()

    @jax.jit
    def train_step(params, opt_state, batch_images, batch_labels):
        grads = jax.grad(loss_fn)(params, batch_images, batch_labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    # A Python loop over one jitted step: XLA:CPU runs convolutions inside lax.scan ~30x slower.
    opt_state = optimizer.init(params)
    for batch in indices:
        params, opt_state = train_step(params, opt_state, images[batch], labels[batch])
    return params, accuracy(params, test_images, test_labels)


def features_and_logits(
    params: dict, images: np.ndarray, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Returns float32 (features [N, 128], logits [N, 10]) of images [N, 8, 8, 1] in [-1, 1]."""
    images = np.asarray(images, np.float32).reshape((-1,) + IMAGE_SHAPE)
    features, logits = [], []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        num_real = batch.shape[0]
        # Pad the last batch to batch_size so every call reuses one compilation.
        batch = np.pad(batch, ((0, batch_size - num_real), (0, 0), (0, 0), (0, 0)))
        batch_features, batch_logits = _apply(params, batch)
        features.append(np.asarray(batch_features)[:num_real])
        logits.append(np.asarray(batch_logits)[:num_real])
    return np.concatenate(features), np.concatenate(logits)


def save_classifier(path: str, params: dict) -> None:
    """Writes params as an orbax checkpoint directory at `path` (absolute path; overwrites)."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.abspath(path), params, force=True)
    checkpointer.wait_until_finished()


def load_classifier(path: str) -> dict:
    """Returns the params stored by save_classifier at `path`."""
    checkpointer = ocp.StandardCheckpointer()
    path = os.path.abspath(path)
    metadata = checkpointer.metadata(path)
    tree = getattr(metadata, "item_metadata", metadata)
    feature_dim = tree["dense1"]["bias"].shape[0]
    abstract = jax.eval_shape(lambda: init_params(0, feature_dim))
    return checkpointer.restore(path, abstract)


def get_or_train_classifier(
    path: str,
    train_images: np.ndarray | None = None,
    train_labels: np.ndarray | None = None,
    test_images: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    seed: int = 0,
) -> dict:
    """Returns classifier params: restored from the checkpoint at `path`, else trained and saved.

    Without data arrays, trains on load_digits_split() (the digits builder's split).
    """
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return load_classifier(path)
    if train_images is None:
        train_images, train_labels, test_images, test_labels = load_digits_split()
    params, _ = train_classifier(train_images, train_labels, test_images, test_labels, seed=seed)
    save_classifier(path, jax.device_get(params))  # Host arrays: any process count.
    return params
