"""CodecLM: one parameter tree for the AR, NAR (and later masked) codec language models.

    params
    ├─ text_embed     [Vt, D]         phoneme/grapheme ids (BOS/EOS/pad from the symbol table)
    ├─ task_embed     [num_tasks, D]  row 0 added to the text BOS slot (TTS); rows 1.. are the
    │                                 SpeechX task tokens of the prefix (nclm.lm.speechx)
    ├─ audio_embed    [Q, V + 4, D]   one table per codebook level: codes, EOS, BOS, MASK, PAD
    ├─ semantic_embed [K + 1, D]      (cfg.semantic_vocab_size = K > 0) frame condition, K = null
    ├─ backbone                       one stack run causally (AR) or bidirectionally (NAR) ...
    │  (or ar_backbone + nar_backbone when cfg.shared_backbone is False)
    ├─ ar_head        [D, Vp]         level-1 codes and EOS (V + 1 padded to cfg.vocab_multiple)
    └─ nar_heads      [Q - 1, D, V]   levels 2..Q

Every stack is conditioned on the stage (the level being predicted) through AdaLN, as VALL-E's
NAR. Methods return float32 logits whatever the compute dtype.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nclm.lm import layout
from nclm.lm.config import LMConfig
from nclm.lm.speechx import KIND_FRAME, KIND_TOKEN, Prefix
from nclm.nn import init as initializers
from nclm.nn.attention import LayerCache
from nclm.nn.attention_mask import MaskSpec
from nclm.nn.transformer import TransformerStack, kernels_out_in, unstack_layers
from nclm.sharding import constrain


class CodecLM(nn.Module):
    cfg: LMConfig
    dtype: Any = jnp.float32
    deterministic: bool = True

    def setup(self):
        cfg = self.cfg
        d = cfg.width
        embed_init = initializers.normal(d**-0.5)
        self.text_embed = self.param(
            "text_embed",
            nn.with_logical_partitioning(embed_init, ("vocab", "embed")),
            (cfg.text_vocab_size, d),
        )
        self.task_embed = self.param(
            "task_embed",
            nn.with_logical_partitioning(embed_init, (None, "embed")),
            (cfg.num_tasks, d),
        )
        self.audio_embed = self.param(
            "audio_embed",
            nn.with_logical_partitioning(embed_init, ("levels", "vocab", "embed")),
            (cfg.num_codebooks, cfg.audio_vocab_size, d),
        )
        if cfg.semantic_vocab_size:
            self.semantic_embed = self.param(
                "semantic_embed",
                nn.with_logical_partitioning(embed_init, ("vocab", "embed")),
                (cfg.semantic_vocab_size + 1, d),
            )
        if cfg.shared_backbone:
            self.backbone = TransformerStack(cfg.stack(True), self.dtype, self.deterministic)
        else:
            self.ar_backbone = TransformerStack(cfg.stack(False), self.dtype, self.deterministic)
            self.nar_backbone = TransformerStack(cfg.stack(True), self.dtype, self.deterministic)
        head_init = initializers.truncated_normal(d**-0.5)
        self.ar_head = self.param(
            "ar_head",
            nn.with_logical_partitioning(head_init, ("embed", "vocab")),
            (d, cfg.ar_head_size),
        )
        self.nar_heads = self.param(
            "nar_heads",
            nn.with_logical_partitioning(head_init, ("levels", "embed", "vocab")),
            (max(cfg.num_codebooks - 1, 1), d, cfg.codebook_size),
        )

    # -- embeddings ----------------------------------------------------------------------------
    def embed_text(self, text: jax.Array, task: jax.Array, prefix: Prefix | None = None):
        """text[B, Lt] ids, task[B] -> [B, Lt, D]; the task row is added to slot 0 (BOS). With a
        SpeechX prefix (nclm.lm.speechx) frame slots embed all Q levels of prefix.codes and
        token slots the task_embed row held in `text`."""
        x = jnp.take(self.text_embed, text, axis=0)
        if prefix is not None:
            frames = self.embed_audio(prefix.codes)  # [B, Lt, D]
            rows = jnp.take(self.task_embed, jnp.clip(text, 0, self.cfg.num_tasks - 1), axis=0)
            kind = prefix.kind[..., None]
            x = jnp.where(kind == KIND_FRAME, frames, jnp.where(kind == KIND_TOKEN, rows, x))
        return x.at[:, 0].add(jnp.take(self.task_embed, task, axis=0))

    def embed_audio(self, tokens: jax.Array, visible: jax.Array | None = None) -> jax.Array:
        """tokens[B, Q', T] (level q in row q) -> [B, T, D] = sum over visible (level, frame) of
        audio_embed[q, token]. One gather over the flattened [Q * (V + 4), D] table."""
        num_q = tokens.shape[1]
        table = self.audio_embed[:num_q].reshape(-1, self.cfg.width)
        offsets = (jnp.arange(num_q) * self.cfg.audio_vocab_size)[None, :, None]
        e = jnp.take(table, tokens + offsets, axis=0)  # [B, Q', T, D]
        if visible is not None:
            e = e * visible[..., None].astype(e.dtype)
        return e.sum(axis=1)

    def _stack(self, causal: bool) -> TransformerStack:
        if self.cfg.shared_backbone:
            return self.backbone
        return self.ar_backbone if causal else self.nar_backbone

    # -- AR ------------------------------------------------------------------------------------
    def ar_hidden(
        self, text, text_len, audio_in, audio_len, task, cache=None, write_index=None, prefix=None
    ):
        """Full causal pass over [text | audio_in] (audio_in: level-1 ids [B, Ta], BOS first).
        With `cache` (one k, v [B x K, L, H] per layer, L >= Lt + Ta; an unrolled model) the K/V
        are written at rows write_index[B] and attention covers the cache (prefill). Returns
        (h [B, Lt+Ta, D], cache).
        """
        num_text, num_audio = text.shape[1], audio_in.shape[1]
        x = jnp.concatenate(
            [self.embed_text(text, task, prefix), self.embed_audio(audio_in[:, None])], axis=1
        )
        pos = layout.positions(text_len, num_text, num_audio)
        # with a cache, rows past this call's slots are not yet written: audio_len hides them
        mask = layout.mask_spec(text_len, audio_len, num_text, causal=True)
        stage = jnp.zeros(text.shape[:1], jnp.int32)
        return self._stack(True)(x, pos, mask, stage, None, cache, write_index)

    def ar_logits(self, text, text_len, audio_in, audio_len, task, prefix=None) -> jax.Array:
        """float32[B, Ta, Vp]: logits of the next level-1 code (or EOS) at every audio slot;
        the columns past V + 1 (cfg.vocab_multiple padding) are -inf, so a softmax, a loss or
        a sampler over all Vp columns equals one over the V + 1 real ones, and the vocabulary
        stays sharded (slicing to V + 1 would not divide over `tensor`)."""
        h, _ = self.ar_hidden(text, text_len, audio_in, audio_len, task, prefix=prefix)
        return self._ar_head_logits(h[:, text.shape[1] :])

    def _ar_head_logits(self, h: jax.Array) -> jax.Array:
        w = self.ar_head.astype(h.dtype)  # float32 accumulation: logits are float32 (decision 8)
        logits = jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)
        logits = constrain(logits, ("batch", "length", "vocab"))
        real = self.cfg.codebook_size + 1
        if logits.shape[-1] == real:
            return logits
        return jnp.where(jnp.arange(logits.shape[-1]) < real, logits, -jnp.inf)

    def ar_project(self, h: jax.Array) -> jax.Array:
        """float32[B, T, V + 1] logits of h[B, T, D] (decoding: the padding columns dropped)."""
        return self._ar_head_logits(h)[..., : self.cfg.codebook_size + 1]

    def ar_step(
        self,
        token: jax.Array,  # int32[B], the last level-1 id
        position: jax.Array,  # int32[B], its rotary position
        write_index: jax.Array,  # int32[B], its cache row
        key_mask: MaskSpec,  # the cache rows it may attend to (layout.cache_step_mask)
        cache: LayerCache,
    ) -> tuple[jax.Array, LayerCache]:
        """One cached decoding step: float32[B, V + 1] logits of the next id, and the cache."""
        x = self.embed_audio(token[:, None, None])  # [B, 1, D]
        stage = jnp.zeros(token.shape, jnp.int32)
        h, cache = self._stack(True)(
            x, position[:, None], key_mask, stage, None, cache, write_index
        )
        return self.ar_project(h)[:, 0], cache

    # -- NAR -----------------------------------------------------------------------------------
    def nar_logits(
        self, text, text_len, codes, code_len, visible, level, task, prefix=None
    ) -> jax.Array:
        """float32[B, T, V]: logits of codebook `level` (1-based scalar >= 2, may be traced) for
        every frame of codes[B, Q, T], embedding only the `visible` [B, Q, T] codes."""
        num_text, num_frames = text.shape[1], codes.shape[2]
        x = self.embed_text(text, task, prefix)
        x = jnp.concatenate([x, self.embed_audio(codes, visible)], axis=1)
        pos = layout.positions(text_len, num_text, num_frames)
        mask = layout.mask_spec(text_len, code_len, num_text, causal=False)
        # the Conformer conv sees real audio frames only, so text padding (bucket-dependent)
        # never reaches it
        conv_mask = layout.key_valid(jnp.zeros_like(text_len), code_len, num_text, num_frames)
        stage = jnp.full(text.shape[:1], level - 1, jnp.int32)
        h, _ = self._stack(False)(x, pos, mask, stage, conv_mask)
        head = jax.lax.dynamic_index_in_dim(self.nar_heads, level - 2, keepdims=False)
        h = h[:, num_text:]
        w = head.astype(h.dtype)
        logits = jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)
        return constrain(logits, ("batch", "length", "vocab"))

    # -- masked (SoundStorm) --------------------------------------------------------------------
    def masked_logits(
        self, text, text_len, tokens, code_len, level, task, semantic=None, prefix=None
    ) -> jax.Array:
        """float32[B, T, V]: logits of codebook `level` (1-based scalar, may be traced) at every
        frame of tokens[B, Q, T], where any entry may be the MASK id (nclm.lm.layout.masked_input).
        Bidirectional pass over [text | frames]; each frame embeds the sum of its Q level ids,
        plus the embedding of its semantic id (semantic[B, T]) when the model has them.
        Level 1 is read out by the AR head's code columns, levels 2..Q by the NAR heads: one
        parameter tree serves the AR, NAR and masked decoders."""
        num_text, num_frames = text.shape[1], tokens.shape[2]
        frames = self.embed_audio(tokens)
        if self.cfg.semantic_vocab_size:
            if semantic is None:  # no semantic condition: the null id (what guidance drops to)
                semantic = jnp.full(tokens.shape[::2], self.cfg.semantic_null_id, jnp.int32)
            frames = frames + jnp.take(self.semantic_embed, semantic, axis=0)
        x = jnp.concatenate([self.embed_text(text, task, prefix), frames], axis=1)
        pos = layout.positions(text_len, num_text, num_frames)
        mask = layout.mask_spec(text_len, code_len, num_text, causal=False)
        conv_mask = layout.key_valid(jnp.zeros_like(text_len), code_len, num_text, num_frames)
        stage = jnp.full(text.shape[:1], level - 1, jnp.int32)
        h, _ = self._stack(False)(x, pos, mask, stage, conv_mask)
        heads = jnp.concatenate([self.ar_head[None, :, : self.cfg.codebook_size], self.nar_heads])
        head = jax.lax.dynamic_index_in_dim(heads, level - 1, keepdims=False)
        h = h[:, num_text:]
        w = head.astype(h.dtype)
        logits = jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)
        return constrain(logits, ("batch", "length", "vocab"))

    def create_parameters(self, text, text_len, codes, code_len, task) -> list[jax.Array]:
        """For `init` only. Setup creates the embeddings and heads; this runs each backbone once,
        in the mode whose parameters it needs: the AR (or shared) stack causally, and the
        bidirectional stack when it is a separate one or holds the Conformer conv, which causal
        passes skip."""
        audio_in, _, _ = layout.ar_audio(
            codes[:, 0], code_len, self.cfg.bos_id, self.cfg.eos_id, self.cfg.pad_id
        )
        out = [self.ar_logits(text, text_len, audio_in, code_len + 1, task)]
        if not self.cfg.shared_backbone or self.cfg.conv_kernel:
            out.append(self.masked_logits(text, text_len, codes, code_len, jnp.int32(1), task))
        return out


def for_decoding(cfg: LMConfig, params: dict) -> tuple[LMConfig, dict]:
    """The same model in the form cached decoding runs: layers unrolled (`scan_layers=False`,
    each stack's stacked `layers` split into `layer_i`) and projection kernels out_in
    (`kernel_layout`, nclm.nn.projection). A scanned layer slices its weights out of the stack on
    every step (a copy of every weight per step where the backend does not fuse a dynamic slice
    into a matmul, as XLA:CPU does not); unrolled, each layer reads its own buffers in place, and
    out_in kernels are read at full bandwidth by a few rows. Converting copies the weights once: a
    caller that decodes many times converts once and passes the result (idempotent)."""
    if not cfg.scan_layers and cfg.kernel_layout == "out_in":
        return cfg, params
    params = _decoding_params(params, cfg.scan_layers, cfg.kernel_layout == "in_out")
    return dataclasses.replace(cfg, scan_layers=False, kernel_layout="out_in"), params


@partial(jax.jit, static_argnums=(1, 2))  # one program, not an op-by-op copy per weight
def _decoding_params(params: dict, unstack: bool, transpose: bool) -> dict:
    params = dict(params)
    for name in ("backbone", "ar_backbone", "nar_backbone"):
        if name in params:
            stack = unstack_layers(params[name]) if unstack else params[name]
            params[name] = kernels_out_in(stack) if transpose else stack
    return params


def init_lm(cfg: LMConfig, key: jax.Array, dtype: Any = jnp.float32) -> dict:
    """Boxed variables (with logical axis names) of a CodecLM for tiny dummy inputs."""
    text = jnp.zeros((1, 4), jnp.int32)
    codes = jnp.zeros((1, cfg.num_codebooks, 4), jnp.int32)
    length = jnp.full((1,), 3, jnp.int32)
    return CodecLM(cfg, dtype).init(
        key, text, length, codes, length, jnp.zeros((1,), jnp.int32), method="create_parameters"
    )
