"""The Codec module: encoder -> quantizer -> decoder, one Flax module with three entry points.

    codes = Codec(cfg).apply(variables, wav, method="encode")         wav[B, S] -> int32[B, Q, T]
    wav   = Codec(cfg).apply(variables, codes, method="decode")       codes[B, Q', T] -> [B, S']
    out   = Codec(cfg).apply(variables, wav, train=True, rngs=...)    training forward

`dtype` is the compute precision of the encoder and decoder (bfloat16 on GPU/TPU); parameters stay
float32, and the quantizer always sees a float32 latent (distances, codebook statistics and losses
stay float32), as do the returned waveform and latent.

`variables` holds `params` (trained by gradients) and, for EMA quantizers, `codebooks` (moved by
`rvq_ema.ema_update`, never by the optimizer). Decoding accepts any number of levels Q' <= Q
(variable bitrate).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from nclm.codec.config import CodecConfig, SEANetConfig
from nclm.codec.dac_net import DACDecoder, DACEncoder
from nclm.codec.quantize import QuantizerOutput
from nclm.codec.rvq_ema import EMAResidualVQ
from nclm.codec.rvq_factorized import FactorizedResidualVQ
from nclm.codec.seanet import SEANetDecoder, SEANetEncoder
from nclm.codec.vocos import VocosDecoder


class CodecOutput(NamedTuple):
    wav: jax.Array  # [B, S] reconstruction, trimmed/padded to the input length
    quantizer: QuantizerOutput
    latent: jax.Array  # [B, T, D] encoder output before quantization


class Codec(nn.Module):
    cfg: CodecConfig
    dtype: Any = jnp.float32

    def setup(self):
        cfg = self.cfg
        seanet = isinstance(cfg.network, SEANetConfig)
        self.encoder = (SEANetEncoder if seanet else DACEncoder)(cfg.network)
        if cfg.quantizer.kind == "ema":
            self.quantizer = EMAResidualVQ(cfg.quantizer)
        else:
            self.quantizer = FactorizedResidualVQ(cfg.quantizer, cfg.network.latent_dim)
        if cfg.decoder == "vocos":
            self.decoder = VocosDecoder(cfg.vocos, cfg.hop_length, cfg.num_codebooks)
        else:
            self.decoder = (SEANetDecoder if seanet else DACDecoder)(cfg.network)

    def _decode_latent(
        self, z: jax.Array, levels_used: Any = None, lengths: jax.Array | None = None
    ) -> jax.Array:
        z = z.astype(self.dtype)
        if self.cfg.decoder == "vocos":
            return self.decoder(z, levels_used, lengths)[..., 0].astype(jnp.float32)
        return self.decoder(z, lengths)[..., 0].astype(jnp.float32)

    def encode_latent(self, wav: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        """wav[B, S] -> continuous latent [B, T, D]. With `lengths` (int[B] samples) each row's
        valid frames are what the clip alone at its own length gives (see nn.conv.fill_past_end)."""
        if lengths is not None and not isinstance(self.cfg.network, SEANetConfig):
            # DAC's preprocessing zero-pads each clip to a whole number of hops
            hop = self.cfg.hop_length
            lengths = -(-jnp.asarray(lengths) // hop) * hop
        return self.encoder(wav[..., None].astype(self.dtype), lengths).astype(jnp.float32)

    def encode(
        self, wav: jax.Array, num_levels: int | None = None, lengths: jax.Array | None = None
    ) -> jax.Array:
        return self.quantizer.encode(self.encode_latent(wav, lengths), num_levels)

    def decode(self, codes: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        """codes[B, Q', T] -> wav[B, S']; `lengths` (int[B] frames) as in encode_latent."""
        return self._decode_latent(self.quantizer.decode(codes), codes.shape[1], lengths)

    def __call__(
        self, wav: jax.Array, train: bool = False, mask: jax.Array | None = None
    ) -> CodecOutput:
        """Training/eval forward on wav[B, S]; mask[B, T] marks real frames."""
        z = self.encode_latent(wav)
        q = self.quantizer(z, train=train, mask=mask)
        used = q.levels_used if self.cfg.decoder == "vocos" else None
        out = self._decode_latent(q.quantized, used)
        length = wav.shape[1]
        out = (
            out[:, :length]
            if out.shape[1] >= length
            else jnp.pad(out, ((0, 0), (0, length - out.shape[1])))
        )
        return CodecOutput(out, q, z)


def init_codec(cfg: CodecConfig, key: jax.Array, num_samples: int | None = None) -> dict:
    """Random variables for `cfg` (params and, for EMA quantizers, codebooks), unboxed."""
    length = num_samples or cfg.hop_length * 4
    model = Codec(cfg)
    k_params, k_books = jax.random.split(key)

    def init(k1, k2):
        return model.init({"params": k1, "codebooks": k2}, jnp.zeros((1, length), jnp.float32))

    return nn.meta.unbox(jax.jit(init)(k_params, k_books))


def num_params(variables: dict) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(variables.get("params", {})))
