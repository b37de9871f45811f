"""Text to speech with a CodecLM and its codec (VALL-E / SoundStorm inference), as a library.

    synth = Synthesizer("runs/lm", "runs/codec")
    wav = synth.synthesize("Hello there.", "voice.wav", "What the voice says.", seed=0)
    wavs = synth.synthesize_batch([Request(text, prompt, prompt_text), ...], sampling, seed=0)
    wav = synth.synthesize(..., mode="masked", target_seconds=2.0, schedule=MaskedSchedule())

Each target text is split into sentences (after . ! ? ; followed by a space; punctuation kept).
Per sentence, with the prompt's codes from `codec.encode` (the LM's Q levels):

    text ids  BOS, ids(prompt transcript), WORD, ids(sentence), EOS   (VALL-E: transcript first)
    AR        level-1 codes following the prompt's level-1 codes, until EOS or max_new
    NAR       levels 2..Q of the new frames, greedily, seeing every level of the prompt frames
    codec     decodes the new frames only: the output never contains the prompt

Modes (MODES) replace the AR and NAR rows above; the text ids are the same in each:

    ar         AR then NAR, as above
    masked     every level of G frames by `masked_generate` (start_level 1), seeing every level
               of the prompt frames; G = target frames (below), not stopped by EOS
    ar+masked  AR level 1, then levels 2..Q by `masked_generate` (given level 1, start_level 2)

Masked decoding follows a `MaskedSchedule` (iterations per level, guidance; nclm/decode/masked.py);
the `sampling` top-k/top-p filters apply to it too. `run` records each request's model passes of
masked decoding in `passes` (a guided pass runs the doubled batch once).

The sentences of one request are joined with SENTENCE_GAP_SECONDS of silence.

Limits, from what the trainer recorded in lm.json (optional keys):

    max_text_tokens   ids per sentence, BOS/EOS and prompt transcript included (unrecorded: none)
    max_audio_frames  prompt + new frames; the prompt may take at most half of it, so that as much
                      is left for speech (unrecorded: MAX_PROMPT_SECONDS)
    max_new           ceil(max_seconds x frame rate) when given; else FRAMES_PER_TOKEN x the
                      sentence's tokens, capped at max_audio_frames - prompt frames when recorded
    target frames     (masked) round(target_seconds x frame rate) when given; else the prompt's
                      speaking rate, prompt frames / transcript tokens x the sentence's tokens
                      (`estimate_frames`); capped like max_new (max_seconds, max_audio_frames)

Shapes are padded to buckets (text TEXT_BUCKET ids; prompt, max_new, the NAR and masked frames
FRAME_BUCKET frames; batch rows a power of two up to `batch_size`) so that repeated calls reuse
compiled programs. `plan` does every check from metadata, audio headers and text alone; weights
load at the first `run`. Batch k of a run samples with fold_in(PRNGKey(seed), k): the output is
deterministic for a seed and a set of requests, but a request batched with others differs from
the same request alone. A batch of R rows spreads over d local devices (parameters replicated,
rows split; d the largest power of two <= min(R, `devices`) dividing R, so one request stays on
one device): the samples are the same for any d.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nclm.decode.masked import MaskedSchedule, estimate_frames
from nclm.decode.sampling import SamplingConfig
from nclm.lm.config import LMConfig
from nclm.tasks.batching import batches_by_bucket, padded_rows, round_up

SENTENCE_GAP_SECONDS = 0.15
TEXT_BUCKET = 32  # text ids
FRAME_BUCKET = 64  # prompt frames, max_new, NAR and masked frames
FRAMES_PER_TOKEN = 16  # max_new per target token when max_seconds is not given
MAX_PROMPT_SECONDS = 20.0  # prompt cap when the checkpoint does not record max_audio_frames
DEFAULT_SAMPLING = SamplingConfig()  # temperature 1, no filtering (VALL-E)
DEFAULT_SCHEDULE = MaskedSchedule()  # SoundStorm's 16, 1, 1, ... iterations; guidance 0 -> 2
MODES = ("ar", "masked", "ar+masked")
_OPTION = {"text": "--text", "prompt": "--prompt", "prompt_text": "--prompt-text"}


@dataclass(frozen=True)
class Request:
    """One utterance to synthesize. `prompt` is an audio file or float32[S] at the codec's rate.
    `where` prefixes error messages (e.g. "requests.jsonl:3"); empty: the `nclm tts` options."""

    text: str
    prompt: str | os.PathLike | np.ndarray
    prompt_text: str
    where: str = ""

    def label(self, field: str) -> str:
        return f"{self.where}: {field}" if self.where else _OPTION[field]


@dataclass(frozen=True)
class _Segment:
    request: int
    prompt: int  # index into Plan.prompts
    text: np.ndarray  # int32[n]: BOS, transcript, WORD, sentence, EOS
    max_new: int  # AR: most new frames; masked: the target frames


@dataclass(frozen=True)
class Plan:
    """Checked inputs of a run: prompt audio (float32[S] at the codec rate) and one segment per
    sentence, in request order."""

    num_requests: int
    prompts: list[np.ndarray]
    segments: list[_Segment]
    mode: str = "ar"


def split_sentences(text: str) -> list[str]:
    """Sentences ending in . ! ? or ; (kept) followed by whitespace; "3.5" stays whole."""
    from nclm.text.frontend import normalize_text

    parts = [p for p in re.split(r"(?<=[.!?;])\s+", normalize_text(text)) if p]
    out: list[str] = []
    for part in parts:
        if out and not any(c.isalnum() for c in part):  # stray punctuation joins its sentence
            out[-1] = f"{out[-1]} {part}"
        else:
            out.append(part)
    return out


class Synthesizer:
    def __init__(
        self,
        lm_dir: str | os.PathLike,
        codec_dir: str | os.PathLike,
        dtype: Any = jnp.float32,
        batch_size: int = 8,
        devices: int | None = None,
    ):
        """Reads lm.json and codec.json only and checks that they belong together. `devices`:
        how many local devices a batch may spread over (None: all; nclm/tasks/data_parallel.py)."""
        from nclm.codec.checkpoint import read_codec_meta, reads_codes_of
        from nclm.codec.config import CodecConfig
        from nclm.lm.checkpoint import read_lm_meta
        from nclm.tasks.data_parallel import check_devices
        from nclm.text.symbols import SymbolTable

        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        self.num_devices = check_devices(devices)
        self.lm_dir, self.codec_dir = Path(lm_dir), Path(codec_dir)
        self.dtype, self.batch_size = jnp.dtype(dtype), batch_size
        meta = read_lm_meta(self.lm_dir)
        codec_meta = read_codec_meta(self.codec_dir)
        where = self.lm_dir / "lm.json"
        try:
            self.cfg = LMConfig.from_dict(meta["config"])
            self.symbols = SymbolTable.from_dict(meta["symbols"], where=str(where))
            trained = meta["codec"]
            self.codec_cfg = CodecConfig.from_dict(codec_meta["config"])
            self.codec_id = codec_meta["codec_id"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{where} or {self.codec_dir}/codec.json: missing {e}") from None
        if not reads_codes_of(codec_meta, trained.get("codec_id")):
            raise ValueError(
                f"--codec {self.codec_dir} is codec {self.codec_id}, but --lm {self.lm_dir} was "
                f"trained on codes of codec {trained.get('codec_id')}"
            )
        if self.cfg.codebook_size != self.codec_cfg.codebook_size or (
            self.cfg.num_codebooks > self.codec_cfg.num_codebooks
        ):
            raise ValueError(
                f"--lm {self.lm_dir}: {self.cfg.num_codebooks} x {self.cfg.codebook_size} codes "
                f"do not fit codec {self.codec_id} ({self.codec_cfg.num_codebooks} x "
                f"{self.codec_cfg.codebook_size})"
            )
        self.max_text_tokens = meta.get("max_text_tokens")
        self.max_audio_frames = meta.get("max_audio_frames")
        self._placement = self._codec = None
        self.decode_cfg = None  # the model's config in decoding form, once _load has run
        self.batch_devices: list[int] = []  # per batch of the last run: devices its rows spread on

    # -- facts ---------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.codec_cfg.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.codec_cfg.frame_rate

    @property
    def max_prompt_frames(self) -> int:
        if self.max_audio_frames:
            return int(self.max_audio_frames) // 2
        return math.floor(MAX_PROMPT_SECONDS * self.frame_rate)

    # -- checks (no model work) ----------------------------------------------------------------
    def plan(
        self,
        requests: list[Request],
        resample: bool = False,
        max_seconds: float | None = None,
        mode: str = "ar",
        target_seconds: float | None = None,
    ) -> Plan:
        """Checks every request and reads its prompt audio; ValueError (one line) otherwise."""
        self._check_limits(max_seconds, mode, target_seconds)
        sentences = [self._check_text(request) for request in requests]
        prompts: list[np.ndarray] = []
        prompt_index: list[int] = []
        seen: dict[str, int] = {}
        for request in requests:
            key = None if isinstance(request.prompt, np.ndarray) else str(request.prompt)
            if key is None or key not in seen:
                prompts.append(self._prompt_audio(request, resample))
                seen[key] = len(prompts) - 1
            prompt_index.append(len(prompts) - 1 if key is None else seen[key])
        # one frontend call for everything: espeak-ng's per-call overhead dominates short texts
        texts = [t for r, s in zip(requests, sentences) for t in (r.prompt_text, *s)]
        tokens = iter(self.symbols.frontend.tokens_batch(texts))
        segments = []
        for i, (request, p) in enumerate(zip(requests, prompt_index)):
            num_frames = math.ceil(len(prompts[p]) / self.codec_cfg.hop_length)
            request_tokens = [next(tokens) for _ in range(1 + len(sentences[i]))]
            for text, num_tokens in self._text_ids(request, sentences[i], request_tokens):
                if mode == "masked":
                    max_new = self._target_frames(
                        num_tokens, len(request_tokens[0]), num_frames, max_seconds, target_seconds
                    )
                else:
                    max_new = self._max_new(num_tokens, num_frames, max_seconds)
                segments.append(_Segment(i, p, text, max_new))
        return Plan(len(requests), prompts, segments, mode)

    @staticmethod
    def _check_limits(max_seconds: float | None, mode: str, target_seconds: float | None) -> None:
        if mode not in MODES:
            raise ValueError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"--max-seconds must be > 0, got {max_seconds}")
        if target_seconds is not None and mode != "masked":
            raise ValueError(
                f"--target-seconds sets the length of --mode masked; in --mode {mode} the AR "
                "decoder stops at its EOS (cap it with --max-seconds)"
            )
        if target_seconds is not None and not target_seconds > 0:
            raise ValueError(f"--target-seconds must be > 0, got {target_seconds}")

    def _check_text(self, request: Request) -> list[str]:
        from nclm.text.frontend import normalize_text

        if not isinstance(request.text, str) or not normalize_text(request.text):
            raise ValueError(f"{request.label('text')}: empty text, expected words to speak")
        if not isinstance(request.prompt_text, str) or not normalize_text(request.prompt_text):
            raise ValueError(
                f"{request.label('prompt_text')}: missing; give the transcript of the prompt "
                "audio (the model reads it before the text)"
            )
        return split_sentences(request.text)

    def _text_ids(
        self, request: Request, sentences: list[str], tokens: list[list[str]]
    ) -> list[tuple[np.ndarray, int]]:
        """(text ids, number of sentence tokens) per sentence; tokens: transcript, sentences."""
        from nclm.text.frontend import WORD
        from nclm.text.symbols import BOS_ID, EOS_ID

        prompt_ids = self._encode_tokens(tokens[0], request.label("prompt_text"))
        word = self._encode_tokens([WORD], "the word boundary")
        out = []
        for sentence, toks in zip(sentences, tokens[1:]):
            ids = self._encode_tokens(toks, f"{request.label('text')} {sentence!r}")
            text = np.concatenate([[BOS_ID], prompt_ids, word, ids, [EOS_ID]]).astype(np.int32)
            if self.max_text_tokens and len(text) > self.max_text_tokens:
                raise ValueError(
                    f"{request.label('text')}: sentence {sentence!r} with the prompt transcript "
                    f"is {len(text)} tokens; the model was trained on at most "
                    f"{self.max_text_tokens}: shorten it or the transcript"
                )
            out.append((text, len(ids)))
        return out

    def _encode_tokens(self, tokens: list[str], where: str) -> np.ndarray:
        unknown = sorted(set(tokens) - set(self.symbols.symbols))
        if unknown:
            raise ValueError(
                f"{where}: unknown symbol(s) {', '.join(map(repr, unknown))}; the LM's "
                f"{len(self.symbols)}-symbol table ({self.symbols.frontend.kind}) lacks them: "
                "remove them or spell them out"
            )
        return self.symbols.encode(tokens, where=where)

    def _prompt_audio(self, request: Request, resample: bool) -> np.ndarray:
        from nclm.audio.io import audio_info, load_audio

        limit = self.max_prompt_frames * self.codec_cfg.hop_length
        if isinstance(request.prompt, np.ndarray):
            wav, name = np.asarray(request.prompt, np.float32), request.label("prompt")
            if wav.ndim != 1 or not wav.size or not np.isfinite(wav).all():
                raise ValueError(f"{name}: expected finite float32[samples] audio")
        else:
            name = f"{request.where + ': ' if request.where else ''}{request.prompt}"
            try:
                info = audio_info(request.prompt)
            except ValueError as e:
                raise ValueError(f"{request.where + ': ' if request.where else ''}{e}") from None
            if info.sample_rate != self.sample_rate and not resample:
                raise ValueError(
                    f"{name}: sample rate {info.sample_rate} Hz, but codec {self.codec_id} "
                    f"runs at {self.sample_rate} Hz; pass --resample to resample the prompt"
                )
            samples = round(info.num_samples * self.sample_rate / info.sample_rate)
            if samples <= limit:
                wav = load_audio(request.prompt, self.sample_rate)
            else:
                wav = np.zeros(samples, np.float32)  # too long: reported below, never read
        if len(wav) > limit:
            why = "half of max_audio_frames" if self.max_audio_frames else "MAX_PROMPT_SECONDS"
            raise ValueError(
                f"{name}: prompt is {len(wav) / self.sample_rate:.2f} s; this model allows at "
                f"most {limit / self.sample_rate:.2f} s ({why}): trim it (3-10 s is typical)"
            )
        return wav

    def _max_new(self, num_tokens: int, prompt_frames: int, max_seconds: float | None) -> int:
        cap = FRAMES_PER_TOKEN * num_tokens
        if max_seconds is not None:
            cap = math.ceil(max_seconds * self.frame_rate)
        if self.max_audio_frames:  # no positions beyond the longest training utterance
            cap = min(cap, int(self.max_audio_frames) - prompt_frames)
        return max(1, cap)

    def _target_frames(
        self,
        num_tokens: int,
        prompt_tokens: int,
        prompt_frames: int,
        max_seconds: float | None,
        target_seconds: float | None,
    ) -> int:
        if target_seconds is not None:
            frames = max(1, round(target_seconds * self.frame_rate))
        else:
            frames = estimate_frames(prompt_frames, prompt_tokens, num_tokens)
        if max_seconds is not None:
            frames = min(frames, math.ceil(max_seconds * self.frame_rate))
        if self.max_audio_frames:
            frames = min(frames, int(self.max_audio_frames) - prompt_frames)
        return max(1, frames)

    # -- synthesis -----------------------------------------------------------------------------
    def synthesize(
        self, text: str, prompt_wav: str | os.PathLike | np.ndarray, prompt_text: str, **options
    ) -> np.ndarray:
        """float32[S] at `sample_rate`: `text` spoken in the voice of the prompt; `options` are
        `synthesize_batch`'s (sampling, seed, max_seconds, resample, mode, ...)."""
        return self.synthesize_batch([Request(text, prompt_wav, prompt_text)], **options)[0]

    def synthesize_batch(
        self,
        requests: list[Request],
        sampling: SamplingConfig = DEFAULT_SAMPLING,
        seed: int = 0,
        max_seconds: float | None = None,
        resample: bool = False,
        mode: str = "ar",
        target_seconds: float | None = None,
        schedule: MaskedSchedule = DEFAULT_SCHEDULE,
    ) -> list[np.ndarray]:
        plan = self.plan(list(requests), resample, max_seconds, mode, target_seconds)
        return self.run(plan, sampling, seed, schedule)

    def run(
        self,
        plan: Plan,
        sampling: SamplingConfig,
        seed: int,
        schedule: MaskedSchedule = DEFAULT_SCHEDULE,
    ) -> list[np.ndarray]:
        """float32[S] per request: its sentences' speech joined by SENTENCE_GAP_SECONDS."""
        if plan.mode != "ar":
            try:
                schedule.steps(self.cfg.num_codebooks)
            except ValueError as e:
                raise ValueError(f"--iterations: {e}") from None
        self._load()
        prompts = [self._encode(wav) for wav in plan.prompts]  # int32[Q, P_i] each
        speech: list[np.ndarray] = [np.zeros(0, np.float32)] * len(plan.segments)
        self.passes = [0] * plan.num_requests
        self.batch_devices = []
        key = jax.random.PRNGKey(seed)
        for k, rows in enumerate(self._batches(plan, prompts)):
            segments = [plan.segments[i] for i in rows]
            wavs, passes = self._generate(
                segments, prompts, jax.random.fold_in(key, k), sampling, plan.mode, schedule
            )
            for i, wav in zip(rows, wavs):
                speech[i] = wav
                self.passes[plan.segments[i].request] += passes
        gap = np.zeros(round(SENTENCE_GAP_SECONDS * self.sample_rate), np.float32)
        parts: list[list[np.ndarray]] = [[] for _ in range(plan.num_requests)]
        for segment, wav in zip(plan.segments, speech):
            parts[segment.request] += [gap, wav] if parts[segment.request] else [wav]
        return [np.concatenate(p).astype(np.float32) for p in parts]

    def _load(self) -> None:
        if self._placement is not None:
            return
        from nclm.codec.interface import NeuralCodec
        from nclm.lm.checkpoint import load_lm
        from nclm.lm.model import for_decoding
        from nclm.tasks.data_parallel import DataParallel

        _, params, _, _ = load_lm(self.lm_dir)
        # decoding's form (unrolled, out_in kernels) once per load, not once per call
        self.decode_cfg, params = for_decoding(self.cfg, params)
        # a batch has at most batch_size rows, so no more devices than that can take a share
        self._placement = DataParallel(params, min(self.num_devices, self.batch_size))
        self._codec = NeuralCodec.load(self.codec_dir)

    def _encode(self, wav: np.ndarray) -> np.ndarray:
        codes, frames = self._codec.encode(wav[None], num_levels=self.cfg.num_codebooks)
        return codes[0, :, : frames[0]]

    def _batches(self, plan: Plan, prompts: list[np.ndarray]) -> list[list[int]]:
        """Segment indices grouped by shape bucket (text, prompt, max_new), <= batch_size each."""
        buckets = [
            (
                round_up(len(s.text), TEXT_BUCKET),
                round_up(prompts[s.prompt].shape[1], FRAME_BUCKET),
                round_up(s.max_new, FRAME_BUCKET),
            )
            for s in plan.segments
        ]
        return batches_by_bucket(buckets, self.batch_size)

    def _inputs(self, rows: list[_Segment], prompts: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        """(text int32[B, Lt], text_len, prompt int32[B, Q, P], prompt_len), padded to buckets."""
        codes = [prompts[s.prompt] for s in rows]
        num_text = round_up(max(len(s.text) for s in rows), TEXT_BUCKET)
        num_prompt = round_up(max(c.shape[1] for c in codes), FRAME_BUCKET)
        text = np.zeros((len(rows), num_text), np.int32)
        prompt = np.zeros((len(rows), self.cfg.num_codebooks, num_prompt), np.int32)
        for b, (s, c) in enumerate(zip(rows, codes)):
            text[b, : len(s.text)] = s.text
            prompt[b, :, : c.shape[1]] = c
        text_len = np.array([len(s.text) for s in rows], np.int32)
        prompt_len = np.array([c.shape[1] for c in codes], np.int32)
        return text, text_len, prompt, prompt_len

    def _generate(
        self,
        segments: list[_Segment],
        prompts: list[np.ndarray],
        key: jax.Array,
        sampling: SamplingConfig,
        mode: str,
        schedule: MaskedSchedule,
    ) -> tuple[list[np.ndarray], int]:
        """(speech per segment, masked model passes) of one bucket, decoded in `mode`; padding
        rows repeat the first segment."""
        from nclm.decode.ar import ar_generate
        from nclm.decode.masked import masked_generate
        from nclm.decode.nar import nar_generate

        n = len(segments)
        rows = padded_rows(segments, self.batch_size)
        num_rows = len(rows)
        d = self._placement.devices_for(num_rows)
        params, shard = self._placement.params(d), lambda *x: self._placement.shard(d, *x)
        budget = np.array([s.max_new for s in rows], np.int32)  # AR: most frames; masked: all
        inputs = shard(*self._inputs(rows, prompts))
        text, text_len, prompt, prompt_len = inputs
        num_frames = round_up(int(budget.max()), FRAME_BUCKET)
        common = {"cfg": self.decode_cfg, "dtype": self.dtype}
        masked = {"schedule": schedule, **common}
        if mode == "masked":
            (lengths,) = shard(budget)
            frames, passes = masked_generate(
                params, *inputs, lengths, key, num_frames=num_frames, **masked
            )
        else:
            ar_key, key = jax.random.split(key)
            (row_budget,) = shard(budget)
            level1, lengths = ar_generate(
                params, text, text_len, prompt[:, 0], prompt_len, ar_key,
                max_new=num_frames, sampling=sampling, min_new=1, budget=row_budget, **common,
            )  # fmt: skip
            lengths = np.asarray(lengths, np.int32)  # each row ended at its own budget or EOS
            num_frames = min(num_frames, round_up(int(lengths.max()), FRAME_BUCKET))
            level1, lengths = shard(level1[:, :num_frames], lengths)
            if mode == "ar":
                frames = nar_generate(params, *inputs, level1, lengths, key, **common)
                passes = 0
            else:
                frames, passes = masked_generate(
                    params, *inputs, lengths, key, given=level1[:, None],
                    num_frames=num_frames, start_level=2, **masked,
                )  # fmt: skip
        # the devices the decoder's output rows lie on: d unless the program replicated them
        self.batch_devices.append(num_rows // frames.sharding.shard_shape(frames.shape)[0])
        wavs, samples = self._codec.decode(np.asarray(frames), np.asarray(lengths))
        return [wavs[b, : samples[b]] for b in range(n)], int(passes)
