"""Pre-norm transformer (optionally Conformer) blocks, scanned over layers, remat policy by name.

    x <- x + Attn(Norm(x, stage))            rotary positions; the MaskSpec decides causal or not
    x <- x + Conv(Norm(x, stage))            conv_kernel > 0 and a `valid` mask given (Conformer)
    x <- x + FFN(Norm(x, stage))             Dense(F) -> GELU -> Dense(D)
    out = Norm(x, stage)

Norm is VALL-E's stage-conditioned AdaLN (a scale/shift row per stage) when `num_stages > 1`.
Scanned layers keep their parameters stacked on a leading `layers` axis (training, full passes).
Cached decoding runs the stack unrolled with out_in projection kernels (nclm.lm.model.for_decoding,
nclm.nn.projection), with one KV cache per layer, `k, v: [B x K, L, H]`, so each layer reads its
own weights and cache in place, at the pace of reading them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from nclm.nn import init as initializers
from nclm.nn.attention import Attention, LayerCache
from nclm.nn.attention_mask import MaskSpec
from nclm.nn.conv import depthwise_conv
from nclm.nn.norms import layer_norm
from nclm.nn.projection import Projection, to_out_in
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
    # nclm.nn.projection.LAYOUTS: "out_in" is cached decoding's (unrolled, kernels_out_in)
    kernel_layout: str = "in_out"

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


class DepthwiseConv(nn.Module):
    """flax `nn.Conv(d, (kernel,), padding="SAME", feature_group_count=d)`: its parameters and its
    output, computed as a sum of shifted copies (`conv.depthwise_conv`): XLA:CPU runs the grouped
    conv one channel at a time, 33 ms against 0.6 ms for 1,024 channels over 750 frames."""

    kernel: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d, k = x.shape[-1], self.kernel
        init = initializers.truncated_normal(k**-0.5)
        kernel = self.param(
            "kernel", nn.with_logical_partitioning(init, (None, None, "embed")), (k, 1, d)
        )
        bias = self.param("bias", _zeros("embed"), (d,))
        left = (k - 1) // 2  # "SAME": the odd one out goes right
        x = jnp.pad(x.astype(self.dtype), ((0, 0), (left, k - 1 - left), (0, 0)))
        y = depthwise_conv(x, kernel.astype(self.dtype)) + bias
        return y.astype(self.dtype)


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
        x = DepthwiseConv(self.kernel, self.dtype, name="depthwise")(x)
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
            cfg.kernel_layout,
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
        h = Projection(
            cfg.ffn,
            ("embed", "mlp"),
            init,
            dtype=self.dtype,
            layout=cfg.kernel_layout,
            name="ffn_in",
        )(norm(x, "ffn_norm"))
        h = constrain(h, ("batch", "length", "mlp"))
        h = Projection(
            cfg.width,
            ("mlp", "embed"),
            initializers.truncated_normal(cfg.ffn**-0.5),
            dtype=self.dtype,
            layout=cfg.kernel_layout,
            name="ffn_out",
        )(drop(jax.nn.gelu(h)))
        x = constrain(x + drop(h), _RESIDUAL)
        return x.astype(self.dtype), cache


class _ScanBlock(nn.Module):
    """Block in scan form: carry (x, this layer's cache or None; scanned layers hold no cache),
    every other input broadcast to all layers."""

    cfg: StackConfig
    dtype: Any
    deterministic: bool

    @nn.compact
    def __call__(self, carry, positions, mask, stage, valid, write_index):
        x, cache = carry
        block = Block
        if self.cfg.remat != "none":
            block = nn.remat(block, policy=REMAT_POLICIES[self.cfg.remat], prevent_cse=False)
        x, cache = block(self.cfg, self.dtype, self.deterministic, name="block")(
            x, cache, positions, mask, stage, valid, write_index
        )
        return (x, cache), None


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
        # one LayerCache (k, v: [B x K, L, H]) per layer (init_cache): unrolled stacks only
        cache: tuple[LayerCache, ...] | None = None,
        write_index: jax.Array | None = None,  # int32[B]
    ) -> tuple[jax.Array, tuple[LayerCache, ...] | None]:
        cfg = self.cfg
        if stage is None:
            stage = jnp.zeros(x.shape[:1], jnp.int32)
        x = constrain(x.astype(self.dtype), _RESIDUAL)
        args = (positions, mask, stage, valid, write_index)
        if cfg.scan_layers:
            if cache is not None:
                raise ValueError(
                    "a KV cache needs an unrolled stack (scan_layers=False; "
                    "nclm.lm.model.for_decoding converts a scanned model's parameters)"
                )
            scanned = nn.scan(
                _ScanBlock,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast,) * len(args),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            (x, _), _ = scanned(cfg, self.dtype, self.deterministic, name="layers")(
                (x, None), *args
            )
        else:
            if cache is not None and len(cache) != cfg.num_layers:
                raise ValueError(f"KV cache of {len(cache)} layers for {cfg.num_layers} layers")
            caches = [None] * cfg.num_layers if cache is None else list(cache)
            for i in range(cfg.num_layers):
                (x, caches[i]), _ = _ScanBlock(
                    cfg, self.dtype, self.deterministic, name=f"layer_{i}"
                )((x, caches[i]), *args)
            cache = None if cache is None else tuple(caches)
        norm_stages = cfg.num_stages if cfg.num_stages > 1 else 0
        return layer_norm(x, stage, norm_stages, "final_norm").astype(self.dtype), cache


def init_cache(
    cfg: StackConfig, batch: int, length: int, dtype=jnp.float32
) -> tuple[LayerCache, ...]:
    """Zeros for an (unrolled) stack's KV cache: one LayerCache, k, v [B x K, L, H], per layer,
    each its own buffer (a decoding loop writes each in place)."""
    shape = (batch * cfg.num_kv_heads, length, cfg.head_dim)
    return tuple(
        LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.num_layers)
    )


# A block's projections (path under "block") and the input axes each contracts
_PROJECTIONS = {
    ("attn", "query"): 1,
    ("attn", "key"): 1,
    ("attn", "value"): 1,
    ("attn", "out"): 2,
    ("ffn_in",): 1,
    ("ffn_out",): 1,
}


def kernels_out_in(params: dict) -> dict:
    """Unrolled stack parameters with in_out projection kernels -> the same with out_in kernels
    (kernel_layout="out_in", nclm.nn.projection): what cached decoding runs."""
    flat = traverse_util.flatten_dict(params)
    for path, value in flat.items():
        if path[0].startswith("layer_") and path[-1] == "kernel" and path[1] == "block":
            num_in = _PROJECTIONS.get(path[2:-1])
            if num_in is not None:
                flat[path] = to_out_in(value, num_in)
    return traverse_util.unflatten_dict(flat)


def unstack_layers(params: dict) -> dict:
    """Scanned stack parameters ({"layers": {"block": stacked}}) -> unrolled ({"layer_i":
    {"block": ...}}): what cached decoding runs (nclm.lm.model.for_decoding)."""
    params = dict(params)
    stacked = params.pop("layers")
    num = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    for i in range(num):
        params[f"layer_{i}"] = jax.tree_util.tree_map(lambda p, i=i: p[i], stacked)
    return params
