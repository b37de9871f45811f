"""Simulated SpeechX training examples, as waveforms: a pure function of (corpus, seed, index).

    corpus = [Utterance(wav, text_ids, speaker), ...]         # float32 at the codec's rate
    sim = simulate(corpus, index=17, seed=0, cfg=SimConfig(), sample_rate=16000)
    sim.task, sim.text (ids or None), sim.parts {"mixture": wav, ...}, sim.target (wav)

Example `index` draws everything from `np.random.default_rng([seed, index])`: the task (by
`cfg.weights`), the utterance, the noise (nclm.audio.noise: white, pink, brown, tone, modulated,
babble of other speakers; "recorded": a stretch of a file of cfg.noise_manifest, e.g. MUSAN's
noise folder, nclm.tasks.recorded_noise) and its SNR, the interfering speaker and its level, the
edit. So any subset of indices can be made in any order, on any host, after any crash, and is
identical (given the same noise files).

    tts   target = s
    ns    mixture = s + n at SNR ~ U(cfg.snr_db), target = s
    sr    same mixture, target = n (as scaled in the mixture)
    tse   mixture = s1 + s2 (another speaker) at SIR ~ U(cfg.sir_db), enrol = another
          utterance of s1's speaker cropped to U(cfg.enrol_seconds), target = s1
    cse   four utterances u1..u4 of one speaker (utterance boundaries: the corpora carry no word
          alignments): pre = u1, post = u3, the edited middle u4 replaces u2; target = u1 u4 u3,
          text = the full edited transcript; pre and post each dropped with p cfg.edit_drop
          (so an edit may start or end the utterance: VoiceCraft cannot edit a last word)
    nse   the same with one noise under everything at SNR ~ U(cfg.snr_db): pre/mid/post are
          (u1 u2 u3 + n) cut at the utterance boundaries, target = u1 u4 u3 + n' where n' is the
          same noise stream (its level kept, only the middle stretch follows the new length)
NS, SR and TSE keep the transcript with probability cfg.text_prob (SpeechX: 0.5). Every part is
zero-padded to a whole number of codec hops, so the frames of pre/edit/post add up exactly in the
jointly encoded target.

Length budget: with `cfg.max_prefix` / `cfg.max_frames` set (the LM's largest buckets: prefix
slots and target frames + EOS; `nclm simulate` takes them from the config's buckets), an example
that would not fit is drawn again (same task, other utterances, from the same generator: still a
pure function of (seed, index)); edits drop their post, then also their pre utterance after a
few tries. Without it, three-utterance edits of 5 s utterances outgrow the buckets and training
skips them (most `nse` examples of the quickstart corpus did). After cfg.max_draws tries the last
draw is kept and the token pipeline skips it.

SNR range: SpeechX's own range is not published in what REFERENCE.md verified; UniAudio draws an
integer SNR in [-20, 40] dB. We default to U(-5, 20) dB: below -5 dB the speech of a small corpus
is mostly inaudible (a quarter of UniAudio's draws) and above 20 dB there is little to remove (a
third of them); both ends are config fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nclm.audio import noise as noise_lib
from nclm.lm import speechx
from nclm.lm.speechx import TASKS as TASK_NAMES

RECORDED = "recorded"  # a noise kind: a stretch of a file of SimConfig.noise_manifest


@dataclass(frozen=True)
class Utterance:
    wav: np.ndarray  # float32[S] at the codec's sample rate
    text: np.ndarray  # int32[L] ids (no BOS/EOS)
    speaker: str


@dataclass(frozen=True)
class SimConfig:
    weights: dict = field(default_factory=lambda: {t: 1.0 for t in TASK_NAMES})
    snr_db: tuple[float, float] = (-5.0, 20.0)
    sir_db: tuple[float, float] = (-3.0, 6.0)  # target speaker over the interfering one
    noise_kinds: tuple[str, ...] = noise_lib.KINDS  # and "recorded": noise_manifest's files
    noise_manifest: str = ""  # a manifest of any audio (nclm data manifest --layout folder)
    text_prob: float = 0.5
    enrol_seconds: tuple[float, float] = (1.0, 3.0)
    edit_drop: float = 0.125
    babble_talkers: int = 3
    max_prefix: int = 0  # prefix slots (BOS, text, EOS, frames, task tokens); 0: no limit
    max_frames: int = 0  # target frames + its EOS frame; 0: no limit
    max_draws: int = 16

    def __post_init__(self):
        unknown = set(self.weights) - set(TASK_NAMES)
        if unknown or not any(w > 0 for w in self.weights.values()):
            raise ValueError(f"simulation weights {self.weights}: tasks from {TASK_NAMES}, one > 0")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError(f"simulation weights {self.weights}: must be >= 0")
        kinds = (*noise_lib.KINDS, RECORDED)
        bad = set(self.noise_kinds) - set(kinds)
        if bad or not self.noise_kinds:
            raise ValueError(f"noise_kinds {self.noise_kinds}: expected some of {kinds}")
        if (RECORDED in self.noise_kinds) != bool(self.noise_manifest):
            raise ValueError(
                f"simulation noise_kinds {self.noise_kinds}, noise_manifest "
                f"{self.noise_manifest!r}: the kind {RECORDED!r} and a noise manifest go together"
                " (nclm data manifest --layout folder NOISE_DIR --out DIR)"
            )
        if min(self.max_prefix, self.max_frames) < 0 or self.max_draws < 1:
            raise ValueError("simulation max_prefix, max_frames >= 0 (0: none), max_draws >= 1")
        for name in ("snr_db", "sir_db", "enrol_seconds"):
            low, high = getattr(self, name)
            if not low <= high:
                raise ValueError(f"simulation {name}={(low, high)}: low must be <= high")

    def to_dict(self) -> dict:
        return {
            "weights": dict(self.weights),
            "snr_db": list(self.snr_db),
            "sir_db": list(self.sir_db),
            "noise_kinds": list(self.noise_kinds),
            "noise_manifest": self.noise_manifest,
            "text_prob": self.text_prob,
            "enrol_seconds": list(self.enrol_seconds),
            "edit_drop": self.edit_drop,
            "babble_talkers": self.babble_talkers,
            "max_prefix": self.max_prefix,
            "max_frames": self.max_frames,
            "max_draws": self.max_draws,
        }


@dataclass
class SimExample:
    task: str
    text: np.ndarray | None  # ids, None when the transcript is left out
    parts: dict  # name -> float32[S] (nclm.lm.speechx part names)
    target: np.ndarray  # float32[S]
    info: dict  # what was drawn (utterance ids, noise kind, snr, ...)


def _pad(wav: np.ndarray, hop: int) -> np.ndarray:
    return np.pad(np.asarray(wav, np.float32), (0, -len(wav) % hop))


class _Corpus:
    def __init__(self, corpus: list[Utterance], noises=None):
        self.utts = corpus
        self.noises = noises
        self.by_speaker: dict[str, list[int]] = {}
        for i, u in enumerate(corpus):
            self.by_speaker.setdefault(u.speaker, []).append(i)

    def other_speaker(self, rng, speaker: str, count: int = 1) -> list[int]:
        others = [i for i, u in enumerate(self.utts) if u.speaker != speaker]
        if not others:
            raise ValueError("simulation needs at least two speakers in the corpus")
        return [others[int(j)] for j in rng.integers(0, len(others), count)]

    def same_speaker(self, rng, speaker: str, count: int, exclude: int) -> list[int]:
        pool = [i for i in self.by_speaker[speaker] if i != exclude] or [exclude]
        return [pool[int(j)] for j in rng.integers(0, len(pool), count)]


def _noise(rng, corpus: _Corpus, cfg: SimConfig, speaker: str, num: int, rate: int):
    kind = cfg.noise_kinds[int(rng.integers(len(cfg.noise_kinds)))]
    if kind == RECORDED:
        if corpus.noises is None:
            raise ValueError(f"simulation noise kind {RECORDED!r}: simulate() got no recordings")
        return corpus.noises.draw(rng, num), kind
    talkers = None
    if kind == "babble":
        talkers = [
            corpus.utts[i].wav for i in corpus.other_speaker(rng, speaker, cfg.babble_talkers)
        ]
    return noise_lib.make_noise(rng, kind, num, rate, talkers), kind


def simulate(
    corpus: list[Utterance],
    index: int,
    seed: int,
    cfg: SimConfig,
    sample_rate: int,
    hop: int = 1,
    noises=None,
) -> SimExample:
    """Example `index` of the stream (module docstring); `noises` (a RecordedNoise of
    cfg.noise_manifest at `sample_rate`) serves the "recorded" noise kind."""
    rng = np.random.default_rng([seed, index])
    tasks = [t for t in TASK_NAMES if cfg.weights.get(t, 0) > 0]
    p = np.array([cfg.weights[t] for t in tasks], np.float64)
    task = tasks[int(rng.choice(len(tasks), p=p / p.sum()))]
    c = _Corpus(corpus, noises)
    for attempt in range(cfg.max_draws):
        example = _draw(rng, c, cfg, task, sample_rate, hop, attempt)
        if fits(example, cfg, hop):
            break
    example.info["draws"] = attempt + 1
    return example


def fits(example: SimExample, cfg: SimConfig, hop: int) -> bool:
    """Whether the laid-out example fits cfg's length budget (module docstring)."""
    frames = {name: -(-len(wav) // hop) for name, wav in example.parts.items()}
    text_len = 0 if example.text is None else len(example.text)
    slots = speechx.prefix_slots(example.task, text_len, frames)
    target = -(-len(example.target) // hop) + 1
    return (not cfg.max_prefix or slots <= cfg.max_prefix) and (
        not cfg.max_frames or target <= cfg.max_frames
    )


def _draw(rng, c: _Corpus, cfg: SimConfig, task: str, sample_rate: int, hop: int, attempt: int):
    corpus = c.utts
    i = int(rng.integers(len(corpus)))
    u = corpus[i]
    info = {"utterance": i, "task": task}
    keep_text = task in ("tts", "cse", "nse") or rng.random() < cfg.text_prob
    s = _pad(u.wav, hop)
    if task == "tts":
        return SimExample(task, u.text, {}, s, info)
    if task in ("ns", "sr"):
        n, info["noise"] = _noise(rng, c, cfg, u.speaker, len(s), sample_rate)
        info["snr_db"] = float(rng.uniform(*cfg.snr_db))
        mix, s, n = noise_lib.mix_at_snr(s, n, info["snr_db"])
        target = s if task == "ns" else n
        return SimExample(task, u.text if keep_text else None, {"mixture": mix}, target, info)
    if task == "tse":
        (j,) = c.other_speaker(rng, u.speaker)
        (k,) = c.same_speaker(rng, u.speaker, 1, exclude=i)
        other = np.resize(corpus[j].wav, len(s))  # looped or cut to the target's length
        info.update(interferer=j, enrol=k, sir_db=float(rng.uniform(*cfg.sir_db)))
        mix, s, _ = noise_lib.mix_at_snr(s, other, info["sir_db"])
        enrol = corpus[k].wav
        seconds = rng.uniform(*cfg.enrol_seconds)
        enrol = _pad(enrol[: int(seconds * sample_rate)], hop)
        text = u.text if keep_text else None
        return SimExample(task, text, {"enrol": enrol, "mixture": mix}, s, info)
    return _edit(rng, c, cfg, task, i, sample_rate, hop, info, attempt)


def _edit(
    rng,
    c: _Corpus,
    cfg: SimConfig,
    task: str,
    i: int,
    rate: int,
    hop: int,
    info: dict,
    attempt: int,
):
    u1, u2, u3, u4 = [i] + c.same_speaker(rng, c.utts[i].speaker, 3, exclude=i)
    drop_pre, drop_post = rng.random(2) < cfg.edit_drop
    drop_post = drop_post or attempt >= cfg.max_draws // 4  # a shorter edit, once long ones failed
    drop_pre = drop_pre or attempt >= cfg.max_draws // 2
    pre = np.zeros(0, np.float32) if drop_pre else _pad(c.utts[u1].wav, hop)
    post = np.zeros(0, np.float32) if drop_post else _pad(c.utts[u3].wav, hop)
    mid, edit = _pad(c.utts[u2].wav, hop), _pad(c.utts[u4].wav, hop)
    texts = [c.utts[u4].text]
    texts = (
        ([] if drop_pre else [c.utts[u1].text]) + texts + ([] if drop_post else [c.utts[u3].text])
    )
    text = np.concatenate(texts).astype(np.int32)
    info.update(pre=None if drop_pre else u1, mid=u2, edit=u4, post=None if drop_post else u3)
    target = np.concatenate([pre, edit, post])
    if task == "cse":
        return SimExample(task, text, {"pre": pre, "post": post}, target, info)
    # one noise stream: the pre and post stretches lie under both the original and the edited
    # utterance (the background is kept), the middle under each is its own stretch
    a, m, e, q = len(pre), len(mid), len(edit), len(post)
    stream, info["noise"] = _noise(rng, c, cfg, c.utts[u1].speaker, a + m + e + q, rate)
    under_original = np.concatenate([stream[:a], stream[a : a + m], stream[a + m + e :]])
    under_edit = np.concatenate([stream[:a], stream[a + m : a + m + e], stream[a + m + e :]])
    original = np.concatenate([pre, mid, post])
    info["snr_db"] = float(rng.uniform(*cfg.snr_db))
    g = noise_lib.noise_gain(original, under_original, info["snr_db"])
    noisy, target = original + g * under_original, target + g * under_edit
    scale = noise_lib.headroom(noisy, target)
    noisy, target = (noisy * scale).astype(np.float32), (target * scale).astype(np.float32)
    parts = {"pre": noisy[:a], "mid": noisy[a : a + m], "post": noisy[a + m :]}
    return SimExample(task, text, parts, target, info)
