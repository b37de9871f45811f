"""Residual vector quantization with EMA codebooks (EnCodec/SoundStream; REFERENCE.md section 1).

Level q quantizes the residual r_q left by levels < q:  i_q = argmin_v ||r_q - e_{q,v}||^2,
r_{q+1} = r_q - e_{q,i_q}; the output is sum_q e_{q,i_q}. Codebooks are not trained by gradients:
they live in the `codebooks` collection and move by exponential moving averages,

    N_v <- g N_v + (1 - g) n_v          (n_v: frames assigned to v in the batch)
    m_v <- g m_v + (1 - g) s_v          (s_v: sum of those frames)
    e_v  = m_v / N~_v,   N~_v = (N_v + eps) / (sum N + V eps) * sum N     (Laplace smoothing)

and a code whose N_v falls under `dead_code_threshold` is restarted at a random frame of the batch
(with N_v set to the threshold and m_v to threshold * frame, so the restart survives the next
average, unlike EnCodec's restart that the same step's EMA overwrites). A level that no frame of
the batch used (variable bandwidth) is left unchanged.

The module never mutates its statistics: `__call__(..., train=True)` returns the batch statistics
in `QuantizerOutput.stats` and the caller applies `ema_update` to the train state.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from nclm.codec.config import QuantizerConfig
from nclm.codec.quantize import QuantizerOutput, active_levels, kmeans, nearest_euclidean
from nclm.nn import init as initializers


class EMAResidualVQ(nn.Module):
    cfg: QuantizerConfig

    def setup(self):
        q, v, d = self.cfg.num_codebooks, self.cfg.codebook_size, self.cfg.codebook_dim
        rng = lambda: self.make_rng("params")
        self.embed = self.variable(
            "codebooks", "embed", lambda: initializers.normal(1.0)(rng(), (q, v, d))
        )
        self.embed_sum = self.variable("codebooks", "embed_sum", lambda: self.embed.value)
        self.cluster_size = self.variable("codebooks", "cluster_size", lambda: jnp.ones((q, v)))

    def encode(self, z: jax.Array, num_levels: int | None = None) -> jax.Array:
        """z[B, T, D] -> codes int32[B, Q', T] for the first Q' = num_levels levels."""
        codes, _ = self._quantize(z, num_levels)
        return codes

    def decode(self, codes: jax.Array) -> jax.Array:
        """codes[B, Q', T] (any Q' <= Q) -> quantized latent [B, T, D]."""
        embed = self.embed.value[: codes.shape[1]]
        picked = jax.vmap(lambda e, c: e[c], in_axes=(0, 1), out_axes=1)(embed, codes)
        return picked.sum(axis=1).astype(jnp.float32)

    def _quantize(self, z: jax.Array, num_levels: int | None):
        embed = self.embed.value[: num_levels or self.cfg.num_codebooks].astype(jnp.float32)

        def level(residual, e):
            idx = nearest_euclidean(residual, e)
            q = e[idx]
            return residual - q, (idx, q, residual)

        _, (codes, quantized, residuals) = jax.lax.scan(level, z.astype(jnp.float32), embed)
        return jnp.swapaxes(codes, 0, 1), (quantized, residuals)

    def __call__(
        self, z: jax.Array, train: bool = False, mask: jax.Array | None = None
    ) -> QuantizerOutput:
        """z[B, T, D]; mask[B, T] marks real frames. In training, with probability `dropout` the
        batch uses a random number of levels 1..Q (variable bandwidth)."""
        cfg = self.cfg
        codes, (quantized, residuals) = self._quantize(z, None)  # quantized[Q, B, T, D]
        used = jnp.full((z.shape[0],), cfg.num_codebooks)
        if train and cfg.dropout > 0:
            key_drop, key_n = jax.random.split(self.make_rng("dropout"))
            n = jax.random.randint(key_n, (), 1, cfg.num_codebooks + 1)
            used = jnp.where(jax.random.bernoulli(key_drop, cfg.dropout), n, used)
        level_on = active_levels(used, cfg.num_codebooks)  # [Q, B]
        frame_w = jnp.ones(z.shape[:2]) if mask is None else mask.astype(jnp.float32)
        weight = level_on[:, :, None] * frame_w  # [Q, B, T]

        q_sum = jnp.sum(quantized * level_on[:, :, None, None], axis=0)
        z32 = z.astype(jnp.float32)
        # Commitment: each level's input residual is pulled towards its chosen code.
        err = jnp.mean(jnp.square(residuals - jax.lax.stop_gradient(quantized)), axis=-1)
        commit = jnp.sum(err * weight) / jnp.maximum(jnp.sum(frame_w), 1.0)
        out = z32 + jax.lax.stop_gradient(q_sum - z32)  # straight-through
        stats = None
        if train:
            stats = batch_statistics(
                residuals, codes, weight, cfg.codebook_size, self.make_rng("codebooks")
            )
        return QuantizerOutput(out.astype(z.dtype), codes, commit, jnp.zeros(()), used, stats)


def batch_statistics(residuals, codes, weight, codebook_size: int, key) -> dict:
    """Per-level counts n[Q, V], sums s[Q, V, D] and one random batch frame per code
    (restart candidates) samples[Q, V, D].
    residuals[Q, B, T, D], codes[B, Q, T], weight[Q, B, T]."""
    num_q, _, _, dim = residuals.shape
    flat_r = jax.lax.stop_gradient(residuals).reshape(num_q, -1, dim)
    onehot = jax.nn.one_hot(jnp.swapaxes(codes, 0, 1).reshape(num_q, -1), codebook_size)
    onehot = onehot * weight.reshape(num_q, -1, 1)
    counts = onehot.sum(axis=1)
    sums = jnp.einsum("qnv,qnd->qvd", onehot, flat_r)
    # Candidates are uniform over the frames with weight > 0, never padding: invert the running
    # count of such frames at a uniform draw.
    real = jnp.cumsum((weight.reshape(num_q, -1) > 0).astype(jnp.float32), axis=-1)
    u = jax.random.uniform(key, (num_q, codebook_size)) * real[:, -1:]
    pick = jax.vmap(lambda c, x: jnp.searchsorted(c, x, side="right"))(real, u)
    pick = jnp.minimum(pick, flat_r.shape[1] - 1)
    samples = jnp.take_along_axis(flat_r, pick[:, :, None], axis=1)
    return {"counts": counts, "sums": sums, "samples": samples}


def ema_update(codebooks: dict, stats: dict, cfg: QuantizerConfig) -> tuple[dict, dict]:
    """Applies one EMA step and dead-code restarts. Returns (new codebooks, metrics)."""
    g, eps = cfg.decay, cfg.epsilon
    # A level no frame used (variable bandwidth dropped it) keeps its state, as in EnCodec, which
    # updates only the levels it ran; decaying it would restart its codes for no reason.
    used = stats["counts"].sum(axis=-1) > 0  # [Q]
    n = g * codebooks["cluster_size"] + (1 - g) * stats["counts"]
    m = g * codebooks["embed_sum"] + (1 - g) * stats["sums"]
    total = n.sum(axis=-1, keepdims=True)
    smoothed = (n + eps) / (total + cfg.codebook_size * eps) * total
    embed = m / smoothed[..., None]
    dead = (n < cfg.dead_code_threshold) & used[:, None]
    threshold = cfg.dead_code_threshold
    embed = jnp.where(dead[..., None], stats["samples"], embed)
    m = jnp.where(dead[..., None], stats["samples"] * threshold, m)
    n = jnp.where(dead, threshold, n)
    metrics = {"dead_code_restarts": dead.sum(axis=-1)}
    new = {"embed": embed, "embed_sum": m, "cluster_size": n}
    keep = lambda k, v: jnp.where(used.reshape(-1, *[1] * (v.ndim - 1)), v, codebooks[k])
    return {k: keep(k, v) for k, v in new.items()}, metrics


def kmeans_init(latents: jax.Array, cfg: QuantizerConfig, key: jax.Array) -> dict:
    """Codebooks from k-means, level by level: level q clusters the residual that levels < q
    leave on latents[N, D] (EnCodec initialises from its first batch the same way). Returns the
    `codebooks` collection of an EMAResidualVQ, EMA statistics consistent with the centroids."""
    residual = latents.reshape(-1, latents.shape[-1]).astype(jnp.float32)
    embeds, counts = [], []
    for level_key in jax.random.split(key, cfg.num_codebooks):
        centroids, count = kmeans(residual, cfg.codebook_size, cfg.kmeans_iters, level_key)
        residual = residual - centroids[nearest_euclidean(residual, centroids)]
        embeds.append(centroids)
        counts.append(count)
    embed, cluster = jnp.stack(embeds), jnp.stack(counts)
    return {"embed": embed, "embed_sum": embed * cluster[..., None], "cluster_size": cluster}
