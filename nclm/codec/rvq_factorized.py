"""DAC's factorized residual VQ (REFERENCE.md section 2).

Per level q, with residual r[B, T, D] (D = latent width, d = codebook_dim, small):
    z_e = r W_in + b_in                              (weight-normed 1x1 conv, D -> d)
    i   = argmax_v cos(z_e, c_v)                     (L2-normalised lookup)
    z_q = c_i                                        (the un-normalised codebook row)
    codebook loss ||sg(z_e) - z_q||^2, commitment loss ||z_e - sg(z_q)||^2 (means over T, d)
    out = (z_e + sg(z_q - z_e)) W_out + b_out         (straight-through, projected back d -> D)
    r  <- r - out
Parameters are stacked over levels ([Q, ...]) so the levels run as one `lax.scan`.

Quantizer dropout: in training, the first round(B * dropout) batch items use a random number of
levels n ~ U{1..Q}: levels >= n add nothing to the output and nothing to the losses.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from nclm.codec.config import QuantizerConfig
from nclm.codec.quantize import QuantizerOutput, active_levels, nearest_cosine
from nclm.nn import init as initializers
from nclm.nn.conv import weight_normed


class FactorizedResidualVQ(nn.Module):
    cfg: QuantizerConfig
    latent_dim: int

    def setup(self):
        q, v, d, big = (
            self.cfg.num_codebooks,
            self.cfg.codebook_size,
            self.cfg.codebook_dim,
            self.latent_dim,
        )
        init = initializers.torch_default((1,))  # DAC: weight-normed 1x1 convs
        axes = ("levels", "embed", None)
        self.in_v = self.param("in_v", nn.with_logical_partitioning(init, axes), (q, big, d))
        self.in_g = self.param(
            "in_g",
            nn.with_logical_partitioning(
                lambda k, s: jnp.linalg.norm(nn.meta.unbox(self.in_v), axis=1), ("levels", None)
            ),
            (q, d),
        )
        self.in_b = self.param(
            "in_b", nn.with_logical_partitioning(nn.initializers.zeros, ("levels", None)), (q, d)
        )
        self.out_v = self.param(
            "out_v", nn.with_logical_partitioning(init, ("levels", None, "embed")), (q, d, big)
        )
        self.out_g = self.param(
            "out_g",
            nn.with_logical_partitioning(
                lambda k, s: jnp.linalg.norm(nn.meta.unbox(self.out_v), axis=1), ("levels", "embed")
            ),
            (q, big),
        )
        self.out_b = self.param(
            "out_b",
            nn.with_logical_partitioning(nn.initializers.zeros, ("levels", "embed")),
            (q, big),
        )
        self.codebook = self.param(
            "codebook",
            nn.with_logical_partitioning(initializers.normal(1.0), ("levels", None, None)),
            (q, v, d),
        )

    def _weights(self, n: int):
        w_in = weight_normed(self.in_v[:n], self.in_g[:n], (1,))
        w_out = weight_normed(self.out_v[:n], self.out_g[:n], (1,))
        return w_in, self.in_b[:n], w_out, self.out_b[:n], self.codebook[:n]

    def _levels(self, z: jax.Array, n: int):
        """Runs levels 0..n-1; returns codes[B, n, T] and per-level (z_e, z_q, out)."""

        def level(residual, w):
            w_in, b_in, w_out, b_out, codebook = w
            z_e = jnp.einsum("btD,Dd->btd", residual, w_in) + b_in
            idx = nearest_cosine(z_e, codebook)
            z_q = codebook[idx]
            z_st = z_e + jax.lax.stop_gradient(z_q - z_e)
            out = jnp.einsum("btd,dD->btD", z_st, w_out) + b_out
            return residual - out, (idx, z_e, z_q, out)

        _, (codes, z_e, z_q, out) = jax.lax.scan(level, z, self._weights(n))
        return jnp.swapaxes(codes, 0, 1), (z_e, z_q, out)

    def encode(self, z: jax.Array, num_levels: int | None = None) -> jax.Array:
        codes, _ = self._levels(z, num_levels or self.cfg.num_codebooks)
        return codes

    def decode(self, codes: jax.Array) -> jax.Array:
        _, _, w_out, b_out, codebook = self._weights(codes.shape[1])
        z_q = jax.vmap(lambda c, i: c[i], in_axes=(0, 1))(codebook, codes)  # [Q, B, T, d]
        return jnp.einsum("qbtd,qdD->btD", z_q, w_out) + b_out.sum(axis=0)

    def __call__(
        self, z: jax.Array, train: bool = False, mask: jax.Array | None = None
    ) -> QuantizerOutput:
        cfg = self.cfg
        codes, (z_e, z_q, out) = self._levels(z, cfg.num_codebooks)
        batch = z.shape[0]
        used = jnp.full((batch,), cfg.num_codebooks)
        n_drop = int(round(batch * cfg.dropout)) if train else 0
        if n_drop:
            random_n = jax.random.randint(
                self.make_rng("dropout"), (batch,), 1, cfg.num_codebooks + 1
            )
            used = jnp.where(jnp.arange(batch) < n_drop, random_n, used)
        level_on = active_levels(used, cfg.num_codebooks)  # [Q, B]
        frame_w = jnp.ones(z.shape[:2]) if mask is None else mask.astype(jnp.float32)
        weight = level_on[:, :, None] * frame_w  # [Q, B, T]
        denom = jnp.maximum(jnp.sum(frame_w), 1.0)
        commit = (
            jnp.sum(jnp.mean(jnp.square(z_e - jax.lax.stop_gradient(z_q)), -1) * weight) / denom
        )
        book = jnp.sum(jnp.mean(jnp.square(jax.lax.stop_gradient(z_e) - z_q), -1) * weight) / denom
        quantized = jnp.sum(out * level_on[:, :, None, None], axis=0)
        return QuantizerOutput(quantized, codes, commit, book, used, None)
