"""Pre-norm transformer (optionally Conformer) blocks, scanned over layers, remat policy by name.

    x <- x + Attn(Norm(x, stage))            rotary positions; the MaskSpec decides causal or not
    x <- x + Conv(Norm(x, stage))            conv_kernel > 0 and a `valid` mask given (Conformer)
    x <- x + FFN(Norm(x, stage))             Dense(F) -> GELU -> Dense(D)
    out = Norm(x, stage)

Norm is VALL-E's stage-conditioned AdaLN (a scale/shift row per stage) when `num_stages > 1`.
Scanned layers keep their parameters stacked on a leading `layers` axis, and so does the KV cache,
`k, v: [layers, B, L, K, H]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nclm.nn import init as initializers
from nclm.nn.attention import Attention, LayerCache
from nclm.nn.attention_mask import MaskSpec
from nclm.nn.norms import layer_norm
from nclm.sharding import constrain

_RESIDUAL = ("batch", "length", "embed")  # the residual stream [B, T, D]


def _zeros(axis: str):
    return nn.with_logical_partitioning(nn.initializers.zeros, (axis,))


REMAT_POLICIES = {
    "none": None,  # keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole layer
    "dots": jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclass(frozen=True)
class StackConfig:
    num_layers: int
    width: int
    num_heads: int
    num_kv_heads: int
    ffn: int
    dropout: float = 0.0
    conv_kernel: int = 0  # > 0: a Conformer convolution module with this depthwise kernel
    rope_base: float = 10000.0
    num_stages: int = 1  # AdaLN rows (VALL-E: one per stage); 1 = plain LayerNorm
    scan_layers: bool = True
    remat: str = "none"
    attention: str = "auto"  # nclm.nn.attention.IMPLEMENTATIONS

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


class ConvModule(nn.Module):
    """Conformer convolution: pointwise (2D) -> GLU -> depthwise conv k -> LayerNorm -> swish ->
    pointwise (D), centered ("same") so it sees both sides: bidirectional stacks only. Only the
    frames in `valid` take part: the others are zero going into the depthwise conv and get no
    conv output, so padding never leaks into real frames."""

    kernel: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:  # x[B,T,D], valid[B,T]
        d = x.shape[-1]
        init = initializers.truncated_normal(d**-0.5)
        x = x * valid[..., None].astype(x.dtype)
        x = nn.Dense(
            2 * d,
            kernel_init=nn.with_logical_partitioning(init, ("embed", "mlp")),
            bias_init=_zeros("mlp"),
            dtype=self.dtype,
            name="pointwise_in",
        )(x)
        x = nn.glu(x, axis=-1) * valid[..., None].astype(x.dtype)  # the bias made padding nonzero
        x = nn.Conv(
            d,
            (self.kernel,),
            padding="SAME",
            feature_group_count=d,
            kernel_init=nn.with_logical_partitioning(
                initializers.truncated_normal(self.kernel**-0.5), (None, None, "embed")
            ),
            bias_init=_zeros("embed"),
            dtype=self.dtype,
            name="depthwise",
        )(x)
        norm = nn.LayerNorm(
            dtype=self.dtype,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            bias_init=_zeros("embed"),
            name="norm",
        )
        x = nn.swish(norm(x))
        out = nn.Dense(
            d,
            kernel_init=nn.with_logical_partitioning(init, ("mlp", "embed")),
            bias_init=_zeros("embed"),
            dtype=self.dtype,
            name="pointwise_out",
        )(x)
        return out * valid[..., None].astype(out.dtype)


class Block(nn.Module):
    cfg: StackConfig
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, cache, positions, mask, stage, valid, write_index):
        cfg = self.cfg
        drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic)

        def norm(h, name):
            return layer_norm(h, stage, cfg.num_stages if cfg.num_stages > 1 else 0, name)

        h, cache = Attention(
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.rope_base,
            self.dtype,
            cfg.attention,
            name="attn",
        )(norm(x, "attn_norm"), positions, mask, cache, write_index)
        x = constrain(x + drop(h), _RESIDUAL)
        if (
            cfg.conv_kernel and valid is not None
        ):  # causal calls pass None: the conv sees both sides
            x = x + drop(
                ConvModule(cfg.conv_kernel, self.dtype, name="conv")(norm(x, "conv_norm"), valid)
            )
        init = initializers.truncated_normal(cfg.width**-0.5)
        h = nn.Dense(
            cfg.ffn,
            kernel_init=nn.with_logical_partitioning(init, ("embed", "mlp")),
            bias_init=_zeros("mlp"),
            dtype=self.dtype,
            name="ffn_in",
        )(norm(x, "ffn_norm"))
        h = constrain(h, ("batch", "length", "mlp"))
        h = nn.Dense(
            cfg.width,
            kernel_init=nn.with_logical_partitioning(
                initializers.truncated_normal(cfg.ffn**-0.5), ("mlp", "embed")
            ),
            bias_init=_zeros("embed"),
            dtype=self.dtype,
            name="ffn_out",
        )(drop(jax.nn.gelu(h)))
        x = constrain(x + drop(h), _RESIDUAL)
        return x.astype(self.dtype), cache


class _ScanBlock(nn.Module):
    """Block in scan form: carry (x, stacked cache or None), the layer index scanned, everything
    else broadcast. The cache rides in the carry, not as a scanned input and output: a scan
    writes its outputs to a fresh buffer, so a scanned cache is copied whole on every decoding
    step; carried, each layer writes only its new rows into the stacked buffer, in place."""

    cfg: StackConfig
    dtype: Any
    deterministic: bool

    @nn.compact
    def __call__(self, carry, layer, positions, mask, stage, valid, write_index):
        x, cache = carry
        block = Block
        if self.cfg.remat != "none":
            block = nn.remat(block, policy=REMAT_POLICIES[self.cfg.remat], prevent_cse=False)
        layer_cache = None if cache is None else _layer(cache, layer)
        x, layer_cache = block(self.cfg, self.dtype, self.deterministic, name="block")(
            x, layer_cache, positions, mask, stage, valid, write_index
        )
        if cache is not None:
            cache = _write_layer_rows(cache, layer_cache, layer, write_index, x.shape[1])
        return (x, cache), None


def _layer(cache: LayerCache, layer: jax.Array) -> LayerCache:
    """One layer's [B, L, K, H] view of a stacked cache."""
    return jax.tree_util.tree_map(
        lambda c: jax.lax.dynamic_index_in_dim(c, layer, keepdims=False), cache
    )


def _write_layer_rows(
    cache: LayerCache, layer_cache: LayerCache, layer: jax.Array, index: jax.Array, num: int
) -> LayerCache:
    """The stacked cache with rows index[b] .. index[b] + num of layer_cache written at `layer`:
    only the new rows move (one scatter into the stacked buffer, in place)."""

    batch = index.shape[0]
    b = jnp.arange(batch)[:, None]  # [B, 1]
    rows = index[:, None] + jnp.arange(num)[None]  # [B, T]

    def write(stack, new):  # stack [layers, B, L, K, H], new [B, L, K, H]
        return stack.at[layer, b, rows].set(new[b, rows], unique_indices=True)

    return LayerCache(write(cache.k, layer_cache.k), write(cache.v, layer_cache.v))


class TransformerStack(nn.Module):
    """x[B, T, D] -> (normed output[B, T, D], updated cache or None)."""

    cfg: StackConfig
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,  # int32[B, T]
        mask: MaskSpec,  # which keys each query sees (nclm.nn.attention_mask)
        stage: jax.Array | None = None,  # int32[B], AdaLN row
        valid: jax.Array | None = None,  # bool[B, T]: conv module frames; None skips the conv
        cache: LayerCache | None = None,  # k, v: [layers, B, L, K, H]
        write_index: jax.Array | None = None,  # int32[B]
    ) -> tuple[jax.Array, LayerCache | None]:
        cfg = self.cfg
        if stage is None:
            stage = jnp.zeros(x.shape[:1], jnp.int32)
        x = constrain(x.astype(self.dtype), _RESIDUAL)
        args = (positions, mask, stage, valid, write_index)
        if cfg.scan_layers:
            scanned = nn.scan(
                _ScanBlock,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            layers = jnp.arange(cfg.num_layers, dtype=jnp.int32)
            (x, cache), _ = scanned(cfg, self.dtype, self.deterministic, name="layers")(
                (x, cache), layers, *args
            )
        else:
            for i in range(cfg.num_layers):
                (x, cache), _ = _ScanBlock(cfg, self.dtype, self.deterministic, name=f"layer_{i}")(
                    (x, cache), jnp.int32(i), *args
                )
        norm_stages = cfg.num_stages if cfg.num_stages > 1 else 0
        return layer_norm(x, stage, norm_stages, "final_norm").astype(self.dtype), cache


def init_cache(cfg: StackConfig, batch: int, length: int, dtype=jnp.float32) -> LayerCache:
    """Zeros for a stack's KV cache: k, v [layers, B, L, K, H]."""
    shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
    return LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def unstack_layers(params: dict) -> dict:
    """Scanned stack parameters ({"layers": {"block": stacked}}) -> unrolled ({"layer_i":
    {"block": ...}}), for the scanned == unrolled equivalence."""
    params = dict(params)
    stacked = params.pop("layers")
    num = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    for i in range(num):
        params[f"layer_{i}"] = jax.tree_util.tree_map(lambda p, i=i: p[i], stacked)
    return params
