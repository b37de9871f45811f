"""What every quantizer shares: its result type, nearest-neighbour search, level masks, k-means."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST  # code choice must not depend on TF32/bf16 matmul defaults


class QuantizerOutput(NamedTuple):
    quantized: jax.Array  # [B, T, D] straight-through quantized latent
    codes: jax.Array  # int32[B, Q, T]
    commitment_loss: jax.Array  # scalar
    codebook_loss: jax.Array  # scalar (zero for EMA codebooks)
    levels_used: jax.Array  # int32[B], levels that contributed to `quantized`
    stats: Any = None  # EMA batch statistics in training (EMA quantizer only)


def nearest_euclidean(x: jax.Array, codebook: jax.Array) -> jax.Array:
    """x[..., D], codebook[V, D] -> int32 index of the nearest row (squared L2)."""
    dist = (
        jnp.sum(jnp.square(x), axis=-1, keepdims=True)
        - 2 * jnp.einsum("...d,vd->...v", x, codebook, precision=HIGHEST)
    ) + jnp.sum(jnp.square(codebook), axis=-1)
    return jnp.argmin(dist, axis=-1).astype(jnp.int32)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def nearest_cosine(x: jax.Array, codebook: jax.Array) -> jax.Array:
    """Index of the codebook row with the largest cosine similarity to x (DAC's lookup)."""
    sim = jnp.einsum("...d,vd->...v", l2_normalize(x), l2_normalize(codebook), precision=HIGHEST)
    return jnp.argmax(sim, axis=-1).astype(jnp.int32)


def active_levels(levels_used: jax.Array, num_levels: int) -> jax.Array:
    """levels_used[B] -> float mask[Q, B], 1 where level q < levels_used[b]."""
    return (jnp.arange(num_levels)[:, None] < levels_used[None, :]).astype(jnp.float32)


def kmeans(
    x: jax.Array, num_clusters: int, iters: int, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Lloyd's k-means on x[N, D]: centroids start at random rows of x (with replacement when
    N < K); a cluster that loses all its points keeps its old centroid. Returns (centroids[K, D],
    counts[K])."""
    x = x.astype(jnp.float32)
    start = jax.random.choice(key, x.shape[0], (num_clusters,), replace=x.shape[0] < num_clusters)
    centroids = x[start]

    def step(centroids, _):
        assign = jax.nn.one_hot(nearest_euclidean(x, centroids), num_clusters)
        counts = assign.sum(axis=0)
        sums = jnp.einsum("nk,nd->kd", assign, x, precision=HIGHEST)
        new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centroids)
        return new, None

    centroids, _ = jax.lax.scan(step, centroids, None, length=iters)
    counts = jax.nn.one_hot(nearest_euclidean(x, centroids), num_clusters).sum(axis=0)
    return centroids, counts
