"""`NeuralCodec`: the one codec interface everything downstream uses.

    codec = NeuralCodec.load("runs/codec")
    codes, frames = codec.encode(wavs, lengths)          # float32[B, S] -> int32[B, Q, T], int[B]
    wavs, samples = codec.decode(codes, frames)          # -> float32[B, T * hop], int[B]

Batches of clips of different lengths are zero-padded on the right; `lengths` (samples) and the
returned `frames` / `samples` say which part of each row is real (codes past a clip's end are 0).
Inputs are padded to a bucket of `bucket_frames * 2^k` frames so that a corpus of any lengths
needs only a logarithmic number of compiled programs (at most 2x padding); pass
`bucket_frames=1` to run every length exactly (as the parity tests do).
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nclm.codec.checkpoint import load_codec, save_codec
from nclm.codec.config import CodecConfig
from nclm.codec.model import Codec, num_params


class EncodedBatch(NamedTuple):
    items: list  # the caller's items, shortest first
    wavs: list[np.ndarray]  # their audio, float32[S] each, as `load` returned it
    codes: np.ndarray  # int32[rows, Q, T]; rows past len(items) are padding
    frames: np.ndarray  # int[rows] real frames of each row


class NeuralCodec:
    def __init__(
        self, cfg: CodecConfig, variables: dict, codec_id: str = "", bucket_frames: int = 50
    ):
        self.cfg = cfg
        self.codec_id = codec_id or cfg.name
        self.variables = jax.device_put(variables)
        self.bucket_frames = bucket_frames
        model = Codec(cfg)
        self._encode = jax.jit(partial(model.apply, method="encode"), static_argnums=2)
        self._decode = jax.jit(partial(model.apply, method="decode"))

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs) -> NeuralCodec:
        cfg, variables, cid = load_codec(path)
        return cls(cfg, variables, cid, **kwargs)

    def save(self, path: str | os.PathLike) -> str:
        self.codec_id = save_codec(path, self.cfg, jax.device_get(self.variables))
        return self.codec_id

    # -- facts (the config's) ----------------------------------------------------------------
    sample_rate = property(lambda self: self.cfg.sample_rate)
    frame_rate = property(lambda self: self.cfg.frame_rate)
    hop_length = property(lambda self: self.cfg.hop_length)
    num_codebooks = property(lambda self: self.cfg.num_codebooks)
    codebook_size = property(lambda self: self.cfg.codebook_size)

    def bitrate(self, num_levels: int | None = None) -> float:
        return self.cfg.bitrate(num_levels)

    @property
    def num_params(self) -> int:
        return num_params(self.variables)

    def num_frames(self, num_samples: int) -> int:
        return math.ceil(num_samples / self.hop_length)

    def _bucket(self, frames: int) -> int:
        b = self.bucket_frames
        if b == 1:
            return max(frames, 1)
        return b * 2 ** max(0, math.ceil(math.log2(max(frames, 1) / b)))

    # -- coding --------------------------------------------------------------------------------
    def encode(
        self, wavs: np.ndarray, lengths: np.ndarray | None = None, num_levels: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """wavs float[B, S] at `sample_rate` -> (codes int32[B, Q', T], frames int[B])."""
        wavs = np.asarray(wavs, np.float32)
        if wavs.ndim != 2:
            raise ValueError(f"encode expects wavs of shape [batch, samples], got {wavs.shape}")
        if num_levels is not None and not 1 <= num_levels <= self.num_codebooks:
            raise ValueError(f"num_levels must be in 1..{self.num_codebooks}, got {num_levels}")
        lengths = np.full(len(wavs), wavs.shape[1]) if lengths is None else np.asarray(lengths)
        frames = np.array([self.num_frames(n) for n in lengths])
        total = self._bucket(self.num_frames(wavs.shape[1]))
        padded = np.zeros((len(wavs), total * self.hop_length), np.float32)
        for i, n in enumerate(lengths):
            padded[i, :n] = wavs[i, :n]
        codes = np.asarray(
            self._encode(self.variables, jnp.asarray(padded), num_levels, jnp.asarray(lengths))
        )
        codes = codes[:, :, : max(frames.max(initial=0), 1)]
        codes = np.where(np.arange(codes.shape[2]) < frames[:, None, None], codes, 0)
        return codes.astype(np.int32), frames

    def decode(
        self, codes: np.ndarray, frames: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """codes int[B, Q', T] (Q' <= Q levels) -> (wavs float32[B, T * hop], samples int[B])."""
        codes = np.asarray(codes)
        if codes.ndim != 3:
            raise ValueError(
                f"decode expects codes of shape [batch, levels, frames], got {codes.shape}"
            )
        if not 1 <= codes.shape[1] <= self.num_codebooks:
            raise ValueError(
                f"codes have {codes.shape[1]} levels; this codec has 1..{self.num_codebooks}"
            )
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(
                f"codes out of range: found [{codes.min()}, {codes.max()}], "
                f"expected 0..{self.codebook_size - 1}"
            )
        frames = np.full(len(codes), codes.shape[2]) if frames is None else np.asarray(frames)
        total = self._bucket(codes.shape[2])
        padded = np.zeros((*codes.shape[:2], total), np.int32)
        padded[:, :, : codes.shape[2]] = codes
        wav = np.asarray(
            self._decode(self.variables, jnp.asarray(padded), jnp.asarray(frames)), np.float32
        )
        samples = frames * self.hop_length
        out_len = codes.shape[2] * self.hop_length
        wav = wav[:, :out_len]
        if wav.shape[1] < out_len:  # DAC's transposed convs can end a few samples short
            wav = np.pad(wav, ((0, 0), (0, out_len - wav.shape[1])))
        wav = np.where(np.arange(out_len) < samples[:, None], wav, 0.0)
        return wav.astype(np.float32), samples

    def encode_batches(
        self,
        items: Sequence[Any],
        load: Callable[[Any], np.ndarray],
        length: Callable[[Any], float],
        batch_size: int,
        num_levels: int | None = None,
    ) -> Iterator[EncodedBatch]:
        """Encodes many clips: items sorted by `length` (less padding), loaded by `load` (float[S]
        at `sample_rate`) two batches ahead on a thread while one encodes, and batched with the
        same number of rows throughout (empty rows pad the last batch) so that every batch
        shares the same few compiled programs. What the CLI, token extraction and codec
        evaluation all run."""
        order = sorted(items, key=length)
        rows = max(1, min(batch_size, len(order)))
        batches = [order[s : s + rows] for s in range(0, len(order), rows)]

        def load_all(batch: list) -> list[np.ndarray]:
            return [load(item) for item in batch]

        with ThreadPoolExecutor(max_workers=2) as pool:
            ahead = deque(pool.submit(load_all, b) for b in batches[:2])
            for n, batch in enumerate(batches):
                wavs = ahead.popleft().result()
                if n + 2 < len(batches):
                    ahead.append(pool.submit(load_all, batches[n + 2]))
                lengths = np.zeros(rows, np.int64)
                lengths[: len(wavs)] = [len(w) for w in wavs]
                padded = np.zeros((rows, lengths.max()), np.float32)  # [B, S]
                for row, wav in enumerate(wavs):
                    padded[row, : len(wav)] = wav
                codes, frames = self.encode(padded, lengths, num_levels)  # [B, Q, T]
                yield EncodedBatch(batch, wavs, codes, frames)
