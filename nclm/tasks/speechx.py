"""SpeechX requests (enhance, remove-speech, extract, edit) with a multi-task CodecLM, as a library.

    runner = SpeechXRunner("runs/speechx/lm", "runs/codec")
    jobs = runner.check([TaskRequest("ns", "noisy.wav", "clean.wav"), ...])   # no model work
    runner.run(jobs, mode="ar", seed=0)                                        # writes each out

Per request (nclm.lm.speechx lays out the prefix; the input is encoded with the LM's Q levels):

    ns / sr   prefix <ns|sr>, C(in);              output: as many frames as the input
    tse       prefix C(enrol), <tse>, C(in);      output: as many frames as the input
    edit      span [start, end) seconds -> frames a = floor(start fr), b = ceil(end fr);
              prefix C(in)[:a], <soe>, <mask> (clean) or C(in)[a:b] (--noisy), <eoe>,
              C(in)[b:]; the output's first a frames are the input's (the decoders' prompt),
              the rest is generated: until EOS (AR) or, masked, as many frames as the input
              (the span keeps its length: there is no transcript of the original to scale by)

NS, SR and TSE always give as many frames as the input (the AR's EOS is held off until then).
Modes: ar (AR level 1 + NAR levels 2..Q, greedy unless --temperature), masked (every level by
masked decoding, guidance off: the null condition would drop the acoustic prompt), ar+masked.
Checks, each one line naming the request: unreadable or missing audio, silence (peak below
SILENCE_PEAK), an enrolment clip outside ENROL_SECONDS, a span outside the audio, empty or
reversed, text with symbols the LM's table lacks, a prefix or output longer than the model was
trained for (lm.json max_text_tokens / max_audio_frames: a clear error, no windowing), and a
checkpoint whose lm.json does not list the task among those it was trained on.
Requests are decoded in batches of one shape bucket (prefix slots PREFIX_BUCKET, known start
and frame budget FRAME_BUCKET; at most `batch_size` rows), each spread over up to `devices`
local devices as in `nclm tts`; batch k samples with fold_in(PRNGKey(seed), k), so greedy
decoding (the default) gives a request the same codes alone or batched, on any device count
(the codec decodes a batch at once: its samples agree to float rounding).
Outputs are written atomically at the codec's sample rate.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nclm.decode.masked import MaskedSchedule
from nclm.decode.sampling import SamplingConfig
from nclm.lm import speechx as sx
from nclm.tasks.batching import batches_by_bucket, padded_rows, round_up
from nclm.tasks.tts import FRAME_BUCKET, Synthesizer

PREFIX_BUCKET = 32  # prefix slots (text, task tokens, acoustic prompt frames)
SILENCE_PEAK = 1e-3  # |x| below this everywhere: no signal to transform
ENROL_SECONDS = (1.0, 10.0)
COMMANDS = {"ns": "enhance", "sr": "remove-speech", "tse": "extract", "cse": "edit", "nse": "edit"}


@dataclass(frozen=True)
class TaskRequest:
    task: str  # ns | sr | tse | cse | nse
    audio: str | os.PathLike
    out: str | os.PathLike
    text: str | None = None
    enroll: str | os.PathLike | None = None
    span: tuple[float, float] | None = None  # edit: [start, end) seconds
    where: str = ""  # prefixes errors ("requests.jsonl:3"); empty: the command's options

    def label(self, option: str) -> str:
        return f"{self.where}: {option}" if self.where else option


@dataclass
class _Job:
    request: TaskRequest
    example: sx.Example  # prefix laid out; its target holds the known start (edits) only
    start: int  # known output frames (an edit's pre)
    total: int  # output frames (the input's); an AR edit ends at its EOS instead


def parse_span(text: str, option: str = "--span") -> tuple[float, float]:
    try:
        start, end = (float(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(
            f"{option} {text!r}: expected START:END in seconds, e.g. 1.2:2.0"
        ) from None
    return start, end


class SpeechXRunner(Synthesizer):
    """Checks requests from metadata and audio, then decodes them in batches of one shape
    bucket, each spread over up to `devices` local devices (nclm/tasks/data_parallel.py)."""

    def __init__(self, lm_dir, codec_dir, dtype=jnp.float32, batch_size=8, devices=None):
        super().__init__(lm_dir, codec_dir, dtype, batch_size, devices)
        from nclm.lm.checkpoint import read_lm_meta

        self.trained_tasks = read_lm_meta(self.lm_dir).get("tasks", ["tts"])

    # -- checks (no model work) ----------------------------------------------------------------
    def check(self, requests: list[TaskRequest]) -> list[tuple[TaskRequest, dict]]:
        """Every request checked and its audio read; ValueError (one line) at the first bad one."""
        return [self._check(r) for r in requests]

    def _check(self, r: TaskRequest) -> tuple[TaskRequest, dict]:
        if r.task not in self.trained_tasks:
            raise ValueError(
                f"{r.label('--lm')} {self.lm_dir}: never trained on {r.task} "
                f"(`nclm {COMMANDS[r.task]}`; it knows {self.trained_tasks}): fine-tune it with "
                "configs/lm/speechx.py"
            )
        audio = {"in": self._audio(r.audio, r.label("IN"))}
        if r.task == "tse":
            if r.enroll is None:
                raise ValueError(f"{r.label('--enroll')}: required, the target speaker's voice")
            audio["enroll"] = self._audio(r.enroll, r.label("--enroll"))
            seconds = len(audio["enroll"]) / self.sample_rate
            low, high = ENROL_SECONDS
            if not low <= seconds <= high:
                raise ValueError(
                    f"{r.label('--enroll')} {r.enroll}: {seconds:.2f} s; an enrolment clip must "
                    f"be {low:g}-{high:g} s of the target speaker"
                )
        text = None
        if r.task in ("cse", "nse") and not (r.text or "").strip():
            raise ValueError(f"{r.label('--text')}: required, the full transcript after the edit")
        if r.text is not None and r.text.strip():
            tokens = self.symbols.frontend.tokens(r.text)
            text = self._encode_tokens(tokens, r.label("--text"))
        if r.task in ("cse", "nse"):
            self._check_span(r, len(audio["in"]) / self.sample_rate)
        audio["text"] = text
        return r, audio

    def _audio(self, path, option: str) -> np.ndarray:
        from nclm.audio.io import AudioError, load_audio

        if not Path(path).is_file():
            raise ValueError(f"{option} {path}: no such audio file")
        try:
            wav = load_audio(path, self.sample_rate)
        except (AudioError, ValueError, RuntimeError) as e:
            raise ValueError(f"{option} {path}: unreadable audio ({e})") from None
        if not wav.size or not np.isfinite(wav).all() or np.max(np.abs(wav)) < SILENCE_PEAK:
            raise ValueError(
                f"{option} {path}: is silent (peak below {SILENCE_PEAK}); nothing to transform"
            )
        return wav

    @staticmethod
    def _check_span(r: TaskRequest, seconds: float) -> None:
        if r.span is None:
            raise ValueError(f"{r.label('--span')}: required, START:END seconds of the edit")
        start, end = r.span
        where = f"{r.label('--span')} {start:g}:{end:g}"
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError(f"{where}: not a number")
        if end < start:
            raise ValueError(f"{where}: reversed (END before START)")
        if end == start:
            raise ValueError(f"{where}: empty; give the seconds to replace")
        if start < 0 or end > seconds + 1e-9:
            raise ValueError(f"{where}: outside the audio (0:{seconds:.2f} s)")

    def _layout(self, r: TaskRequest, audio: dict, codes: dict) -> _Job:
        q, c = self.cfg.num_codebooks, codes["in"]
        num = c.shape[1]
        unknown = np.zeros((q, 1), np.int32)  # the target is what decoding makes
        if r.task in ("ns", "sr"):
            ex = sx.layout_example(r.task, audio["text"], unknown, q, mixture=c)
            start, total = 0, num
        elif r.task == "tse":
            ex = sx.layout_example("tse", audio["text"], unknown, q, enrol=codes["enroll"],
                                   mixture=c)  # fmt: skip
            start, total = 0, num
        else:
            a = min(math.floor(r.span[0] * self.frame_rate), num)
            b = min(math.ceil(r.span[1] * self.frame_rate), num)
            parts = {"pre": c[:, :a], "post": c[:, b:]}
            if r.task == "nse":
                parts["mid"] = c[:, a:b]
            ex = sx.layout_example(r.task, audio["text"], c[:, : a + 1], q, **parts)
            start, total = a, num
        self._check_size(r, len(ex.prefix), total)
        return _Job(r, ex, start, total)

    def _check_size(self, r: TaskRequest, prefix_len: int, frames: int) -> None:
        limits = ((prefix_len, self.max_text_tokens, "prompt slots (text + audio frames)"),
                  (frames, self.max_audio_frames, "output frames"))  # fmt: skip
        for n, limit, what in limits:
            if limit and n > int(limit):
                raise ValueError(
                    f"{r.label('IN')} {r.audio}: needs {n} {what}, the model was trained for "
                    f"at most {limit}: cut the input shorter (no windowing)"
                )

    # -- decoding ------------------------------------------------------------------------------
    def run(self, checked, mode: str, seed: int, sampling=None, schedule=None) -> list[str]:
        """Decodes and writes every checked request; returns a line per output, in order."""
        from nclm.audio.io import save_audio

        sampling = sampling or SamplingConfig(temperature=0.0)
        schedule = schedule or MaskedSchedule(guidance="none")
        self._load()
        jobs = []
        for r, audio in checked:
            codes = {name: self._encode(audio[name]) for name in ("in", "enroll") if name in audio}
            jobs.append((self._layout(r, audio, codes), codes["in"]))
        lines = [""] * len(jobs)
        self.batch_devices = []
        key = jax.random.PRNGKey(seed)
        for k, rows in enumerate(self._job_batches([job for job, _ in jobs], mode)):
            outs = self._decode_batch(
                [jobs[i] for i in rows], mode, jax.random.fold_in(key, k), sampling, schedule
            )
            # one codec call per batch; each row decodes as it would alone (per-row lengths)
            lengths = np.array([out.shape[1] for out in outs], np.int32)
            codes = np.zeros((len(outs), outs[0].shape[0], int(lengths.max())), np.int32)
            for b, out in enumerate(outs):
                codes[b, :, : out.shape[1]] = out
            wavs, samples = self._codec.decode(codes, lengths)
            for b, i in enumerate(rows):
                r = jobs[i][0].request
                save_audio(r.out, wavs[b, : samples[b]], self.sample_rate)
                lines[i] = f"wrote {r.out} ({samples[b] / self.sample_rate:.2f} s, {r.task})"
        return lines

    def _budget(self, job: _Job, mode: str) -> int:
        """Frames decoding may make for the job: its output's, or an edit's with room to run
        longer (AR stops at EOS), rounded to the frame bucket."""
        gen = job.total - job.start
        grow = mode != "masked" and job.request.task in ("cse", "nse")
        return round_up(max(gen, 1) + (gen // 2 + 8 if grow else 0), FRAME_BUCKET)

    def _job_batches(self, jobs: list[_Job], mode: str) -> list[list[int]]:
        """Job indices grouped by shape bucket (prefix slots, known start, frame budget)."""
        buckets = [
            (
                round_up(len(job.example.prefix), PREFIX_BUCKET),
                round_up(max(job.start, 1), FRAME_BUCKET),
                self._budget(job, mode),
            )
            for job in jobs
        ]
        return batches_by_bucket(buckets, self.batch_size)

    def _decode_batch(self, jobs, mode, key, sampling, schedule) -> list[np.ndarray]:
        """int32[Q, T] per job: its known start then the generated frames. Rows are padded to a
        power of two (repeating the first job) and spread over the devices like `nclm tts`."""
        from nclm.decode.ar import ar_generate
        from nclm.decode.masked import masked_generate
        from nclm.decode.nar import nar_generate

        q = self.cfg.num_codebooks
        rows = padded_rows(jobs, self.batch_size)
        num_rows = len(rows)
        d = self._placement.devices_for(num_rows)
        params, shard = self._placement.params(d), lambda *x: self._placement.shard(d, *x)
        examples = [job.example for job, _ in rows]
        arrays = sx.stack_prefixes(
            examples, round_up(max(len(ex.prefix) for ex in examples), PREFIX_BUCKET)
        )
        starts = np.array([job.start for job, _ in rows], np.int32)
        prompt = np.zeros(
            (num_rows, q, round_up(max(int(starts.max()), 1), FRAME_BUCKET)), np.int32
        )
        for b, (job, c_in) in enumerate(rows):
            prompt[b, :, : job.start] = c_in[:q, : job.start]
        gen = np.array([job.total - job.start for job, _ in rows], np.int32)
        budget = np.array([self._budget(job, mode) for job, _ in rows], np.int32)
        num_frames = int(budget.max())
        text, text_len, kind, codes, prompt, start = shard(
            arrays["text"], arrays["text_len"], arrays["prefix_kind"], arrays["prefix_codes"],
            prompt, starts,
        )  # fmt: skip
        prefix = sx.Prefix(kind, codes)
        common = {"cfg": self.decode_cfg, "dtype": self.dtype, "prefix": prefix}
        inputs = (params, text, text_len, prompt, start)
        if mode == "masked":
            lengths = gen
            frames, _ = masked_generate(*inputs, *shard(gen), key, num_frames=num_frames,
                                        schedule=schedule, **common)  # fmt: skip
        else:
            # ns/sr/tse: exactly the input's frames (EOS held off until there, then forced);
            # edits: until EOS or the budget
            fixed = np.array([job.request.task in ("ns", "sr", "tse") for job, _ in rows])
            min_new, row_budget = shard(
                np.where(fixed, gen, 1).astype(np.int32), np.where(fixed, gen, budget)
            )
            level1, lengths = ar_generate(params, text, text_len, prompt[:, 0], start, key,
                                          max_new=num_frames, sampling=sampling,
                                          min_new=min_new, budget=row_budget,
                                          **common)  # fmt: skip
            lengths = np.asarray(lengths, np.int32)  # each row ended at its own budget or EOS
            (gen_len,) = shard(lengths)
            if mode == "ar":
                frames = nar_generate(*inputs, level1, gen_len, key, **common)
            else:
                frames, _ = masked_generate(*inputs, gen_len, key, given=level1[:, None],
                                            num_frames=num_frames, start_level=2,
                                            schedule=schedule, **common)  # fmt: skip
        self.batch_devices.append(num_rows // frames.sharding.shard_shape(frames.shape)[0])
        frames = np.asarray(frames)
        return [
            np.concatenate([c_in[:q, : job.start], frames[b, :, : lengths[b]]], axis=1)
            for b, (job, c_in) in enumerate(jobs)
        ]
