"""A small byte-level text encoder, and the wrappers that condition a backbone on text: on this
encoder's output (`TextConditioned`) or on embeddings made outside diffax (`ContextConditioned`).

Tokens are UTF-8 bytes shifted by 2 after a BOS token, padded to a fixed length: no vocabulary file
and no download. The BOS token is always valid, so the empty caption (the null context of
classifier-free guidance) still has one key to attend to. The encoder is trained jointly with the
denoiser: `TextConditioned` holds both, so its parameters are {"denoiser": ..., "encoder": ...}
and checkpoints and EMA treat them as one tree.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffax.models.cross_attention import MultiHeadAttention, layer_norm

PAD_ID = 0  # Padding after the caption: masked out of every attention.
BOS_ID = 1  # First token of every caption (the whole of the empty one).
BYTE_OFFSET = 2  # Byte b is token b + 2.
VOCAB_SIZE = 256 + BYTE_OFFSET


def tokenize(texts: Sequence[str], length: int) -> np.ndarray:
    """Returns int32 tokens [N, length]: BOS, the UTF-8 bytes + 2, then PAD; ValueError if a
    text does not fit in length - 1 bytes."""
    tokens = np.full((len(texts), length), PAD_ID, np.int32)
    tokens[:, 0] = BOS_ID
    for i, text in enumerate(texts):
        data = text.encode("utf-8")
        if len(data) > length - 1:
            raise ValueError(
                f"The caption {text!r} is {len(data)} UTF-8 bytes; data.text_length={length} "
                f"holds at most {length - 1} (one token is the BOS)."
            )
        tokens[i, 1 : 1 + len(data)] = np.frombuffer(data, np.uint8).astype(np.int32) + BYTE_OFFSET
    return tokens


def detokenize(tokens: np.ndarray) -> list[str]:
    """Returns the captions of int tokens [N, L] (BOS and PAD dropped)."""
    rows = np.asarray(tokens)
    return [bytes(int(t) - BYTE_OFFSET for t in row if t >= BYTE_OFFSET).decode() for row in rows]


def null_tokens(batch: int, length: int) -> jax.Array:
    """Returns the empty caption [batch, length]: BOS then PAD (the guidance null context)."""
    return jnp.zeros((batch, length), jnp.int32).at[:, 0].set(BOS_ID)


def token_mask(tokens: jax.Array) -> jax.Array:
    """Returns bool [B, L]: True on BOS and byte tokens, False on padding."""
    return tokens != PAD_ID


def word_ids(tokens: jax.Array) -> jax.Array:
    """Returns int32 [B, L]: the word of each token, counting from 1; a space starts a new word
    (and belongs to it), BOS belongs to the first word, padding to the last."""
    starts = (tokens == ord(" ") + BYTE_OFFSET) | (tokens == BOS_ID)
    return jnp.cumsum(starts, axis=1, dtype=jnp.int32)


class TextEncoder(nn.Module):
    """Pre-LN transformer over byte tokens: `tokens [B, L] -> context [B, L, width]` (float32).

    Byte embeddings plus a byte 3-gram convolution, the position code of `positions`, then `depth`
    blocks of masked self-attention and MLP, and a final LayerNorm.
    """

    max_length: int  # L, the token length (learned position embeddings)
    width: int = 128  # D, the token width
    depth: int = 2  # transformer blocks
    num_heads: int = 4
    mlp_ratio: int = 4
    # "learned": a position table added to the tokens (CLIP's text encoder); "none": order comes
    # only from the 3-gram convolution, so a word reads the same wherever it sits in the caption;
    # "words": as "none", but the first block attends only within each word (space-separated),
    # with rotary positions, so it reads each word whole ("one" alone is not "one" in "someone").
    positions: str = "learned"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Returns the float32 context `[B, L, width]`; padding keys get no attention weight."""
        mask = token_mask(tokens)
        h = nn.Embed(VOCAB_SIZE, self.width, name="token_embed")(tokens)  # [B, L, D]
        # A byte 3-gram convolution (padding zeroed first) gives every block local spelling
        # features that do not depend on where a word sits in the caption.
        h = h * mask[..., None]
        h = h + nn.Conv(self.width, (3,), padding="SAME", dtype=self.dtype, name="ngram_conv")(
            h.astype(self.dtype)
        ).astype(jnp.float32)
        if self.positions == "learned":
            pos = self.param(
                "pos_embed", nn.initializers.normal(0.02), (self.max_length, self.width)
            )
            h = h + pos[None, : tokens.shape[1]]
        elif self.positions not in ("none", "words"):
            raise ValueError(f"positions={self.positions!r} is not 'learned', 'none' or 'words'.")
        for i in range(self.depth):
            n = layer_norm(h, f"block_{i}_norm_attn").astype(self.dtype)
            by_word = self.positions == "words" and i == 0
            keys = mask
            if by_word:  # Each token's keys: the valid tokens of its own word, [B, L, L].
                words = word_ids(tokens)
                keys = (words[:, :, None] == words[:, None, :]) & mask[:, None, :]
            attention = MultiHeadAttention(
                self.num_heads, self.dtype, rotary=by_word, name=f"block_{i}_attn"
            )
            h = h + attention(n, n, keys).astype(jnp.float32)
            n = layer_norm(h, f"block_{i}_norm_mlp").astype(self.dtype)
            n = nn.Dense(self.mlp_ratio * self.width, dtype=self.dtype, name=f"block_{i}_mlp_in")(n)
            n = nn.Dense(self.width, dtype=self.dtype, name=f"block_{i}_mlp_out")(nn.gelu(n))
            h = h + n.astype(jnp.float32)
        return layer_norm(h, "final_norm")


class TextConditioned(nn.Module):
    """A backbone conditioned on captions: `(x, t, y=None, *, tokens [B, L]) -> backbone output`.

    The encoder's context and the token mask reach the backbone as `context=`, `context_mask=`;
    tokens=None is the empty caption (the null context).
    """

    denoiser: nn.Module
    encoder: TextEncoder

    @property
    def num_classes(self) -> int:
        """Returns the backbone's label classes (0 for a text-only model)."""
        return getattr(self.denoiser, "num_classes", 0)

    @property
    def text_length(self) -> int:
        """Returns L, the token length every caption is padded to."""
        return self.encoder.max_length

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        y: jax.Array | None = None,
        *,
        train: bool = False,
        tokens: jax.Array | None = None,
    ) -> jax.Array:
        """Returns the backbone's output for x [B, H, W, C], t [B] and tokens [B, L] or None."""
        if tokens is None:
            tokens = null_tokens(x.shape[0], self.text_length)
        if tokens.ndim != 2 or tokens.shape[1] != self.text_length:
            raise ValueError(
                f"tokens must be [B, {self.text_length}] (data.text_length), got {tokens.shape}."
            )
        context = self.encoder(tokens)
        return self.denoiser(x, t, y, train=train, context=context, context_mask=token_mask(tokens))


def null_context(batch: int, length: int, width: int) -> dict[str, jax.Array]:
    """Returns the null context of precomputed embeddings: zero [batch, length, width] with an
    all-False mask [batch, length].

    Exactly "no text" in the masked attention (cross_attention.masked_attention): with every key
    masked the weights are uniform, and the key/value projections have no bias, so every value
    is 0 and cross-attention adds only its output bias, whatever the weights learn. A stored
    null embedding (an encoder's output for "") would depend on the encoder; this needs none.
    """
    return {
        "context": jnp.zeros((batch, length, width), jnp.float32),
        "context_mask": jnp.zeros((batch, length), bool),
    }


class ContextConditioned(nn.Module):
    """A backbone conditioned on text embeddings computed outside diffax (diffax.text_embeddings):
    `(x, t, y=None, *, context [B, L, D], context_mask [B, L]) -> backbone output`.

    Parameters are {"denoiser": ...}; context=None is the null context (`null_context`), and
    embeddings under a False mask are zeroed, so a row with no True is that null context too.
    """

    denoiser: nn.Module
    length: int  # L, data.text_length.
    width: int  # D, model.text.width: the stored embeddings' width.

    @property
    def num_classes(self) -> int:
        """Returns the backbone's label classes (0 for a text-only model)."""
        return getattr(self.denoiser, "num_classes", 0)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        y: jax.Array | None = None,
        *,
        train: bool = False,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Returns the backbone's output for x [B, H, W, C], t [B] and a context or None."""
        if context is None:
            null = null_context(x.shape[0], self.length, self.width)
            context, context_mask = null["context"], null["context_mask"]
        if context.shape[1:] != (self.length, self.width) or context_mask is None:
            raise ValueError(
                f"context must be [B, {self.length}, {self.width}] (data.text_length, "
                f"model.text.width) with a mask [B, {self.length}], got {context.shape}."
            )
        context_mask = context_mask.astype(bool)
        # Masked rows zeroed: an all-False row is then the null context whatever it stores.
        context = jnp.where(context_mask[..., None], context.astype(jnp.float32), 0.0)
        return self.denoiser(x, t, y, train=train, context=context, context_mask=context_mask)


def is_context_conditioned(model: Any) -> bool:
    """Returns whether model reads precomputed text embeddings (a ContextConditioned wrapper)."""
    return isinstance(model, ContextConditioned)


def is_text_conditioned(model: Any) -> bool:
    """Returns whether model reads captions (a TextConditioned wrapper)."""
    return isinstance(model, TextConditioned)
