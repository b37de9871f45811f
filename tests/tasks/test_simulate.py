"""Simulated SpeechX data: locally made noise has its colour, mixtures hit the drawn SNR within
0.1 dB, every task's example is a function of (seed, index), and the encoded shards of a crashed
and resumed run are byte-identical to an uninterrupted one and read back as SpeechX batches."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import soundfile as sf

from nclm.audio import noise as N
from nclm.audio.io import AudioError, load_audio
from nclm.codec import config
from nclm.codec.interface import NeuralCodec
from nclm.codec.model import init_codec
from nclm.data.manifest import manifest_from_folder, write_manifest
from nclm.data.token_pipeline import make_eval_batches
from nclm.lm import speechx as sx
from nclm.tasks.recorded_noise import RecordedNoise
from nclm.tasks.simulate import SimConfig, Utterance, simulate
from nclm.tasks.simulate_shards import simulate_tokens

RATE = 16000


def _speech(i: int, seconds: float = 0.5) -> np.ndarray:
    """A voiced-looking clip: harmonics of a per-utterance pitch under a syllable envelope."""
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 100 + 15 * i
    wav = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    return (0.2 * wav * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


CORPUS = [
    Utterance(_speech(i, 0.3 + 0.05 * i), np.arange(3 + i, dtype=np.int32) + 3, f"s{i % 3}")
    for i in range(9)
]


@pytest.mark.parametrize("colour,slope", [("white", 0.0), ("pink", -1.0), ("brown", -2.0)])
def test_coloured_noise_spectrum(colour, slope):
    """The log-log slope of the power spectrum (1/f^a) over 100 Hz - 6 kHz is -a within 0.15."""
    x = N.coloured_noise(np.random.default_rng(0), 2**16, colour)
    assert abs(np.sqrt(np.mean(x.astype(np.float64) ** 2)) - 1) < 1e-5
    f = np.fft.rfftfreq(len(x), 1 / RATE)
    psd = np.abs(np.fft.rfft(x)) ** 2
    band = (f > 100) & (f < 6000)
    fit = np.polyfit(np.log(f[band]), np.log(psd[band]), 1)[0]
    assert abs(fit - slope) < 0.15, fit


@pytest.mark.parametrize("kind", N.KINDS)
@pytest.mark.parametrize("snr", [-5.0, 7.3, 20.0])
def test_mix_hits_the_requested_snr(kind, snr):
    rng = np.random.default_rng(1)
    speech = _speech(0) * 4.0  # loud: the headroom rescale runs at low SNR
    n = N.make_noise(rng, kind, len(speech), RATE, [c.wav for c in CORPUS[1:4]])
    mix, s, scaled = N.mix_at_snr(speech, n, snr)
    assert np.max(np.abs(mix)) <= 0.99 + 1e-6
    assert abs(N.snr_db(s, mix.astype(np.float64) - s) - snr) < 0.1


@pytest.mark.parametrize("task", sx.TASKS)
def test_simulated_examples_are_deterministic_and_laid_out(task):
    cfg = SimConfig(weights={task: 1.0})
    hop = 160
    for index in range(3):
        a = simulate(CORPUS, index, 7, cfg, RATE, hop)
        b = simulate(CORPUS, index, 7, cfg, RATE, hop)
        assert a.task == task and a.info == b.info
        np.testing.assert_array_equal(a.target, b.target)
        for name in a.parts:
            np.testing.assert_array_equal(a.parts[name], b.parts[name])
            assert len(a.parts[name]) % hop == 0
        assert len(a.target) % hop == 0
        if task in ("ns", "sr"):  # the drawn SNR, measured on what is returned
            mix = a.parts["mixture"].astype(np.float64)
            s = mix - a.target if task == "sr" else a.target
            assert abs(N.snr_db(s, mix - s) - a.info["snr_db"]) < 0.1
            assert -5 <= a.info["snr_db"] <= 20
        if task == "tse":
            assert CORPUS[a.info["interferer"]].speaker != CORPUS[a.info["utterance"]].speaker
            assert CORPUS[a.info["enrol"]].speaker == CORPUS[a.info["utterance"]].speaker
        if task == "nse":  # the background under pre/post is the same in input and target
            pre = a.parts["pre"]
            np.testing.assert_allclose(a.target[: len(pre)], pre, atol=1e-6)
            post = a.parts["post"]
            if len(post):
                np.testing.assert_allclose(a.target[-len(post) :], post, atol=1e-6)
    other = simulate(CORPUS, 0, 8, cfg, RATE, hop)
    assert other.info != simulate(CORPUS, 0, 7, cfg, RATE, hop).info or not np.array_equal(
        other.target, simulate(CORPUS, 0, 7, cfg, RATE, hop).target
    )


def _laid_out(example, hop: int, q: int = 2) -> sx.Example:
    """The example laid out as the LM sees it, with zero codes of each part's frame count."""
    codes = lambda wav: np.zeros((q, -(-len(wav) // hop)), np.int32)
    parts = {name: codes(wav) for name, wav in example.parts.items()}
    return sx.layout_example(example.task, example.text, codes(example.target), q, **parts)


def test_examples_fit_the_length_budget():
    """With max_prefix / max_frames every example fits (prefix slots as layout_example lays
    them out; target frames + EOS), every task still appears, and the same indices drawn
    without the budget overflow it (edits of three utterances)."""
    hop, max_prefix, max_frames = 160, 130, 110
    budget = SimConfig(max_prefix=max_prefix, max_frames=max_frames)
    tasks, over = set(), 0
    for index in range(60):
        a = simulate(CORPUS, index, 3, budget, RATE, hop)
        ex = _laid_out(a, hop)
        assert len(ex.prefix) <= max_prefix and ex.target.shape[1] + 1 <= max_frames, a.info
        tasks.add(a.task)
        free = _laid_out(simulate(CORPUS, index, 3, SimConfig(), RATE, hop), hop)
        over += len(free.prefix) > max_prefix or free.target.shape[1] + 1 > max_frames
    assert tasks == set(sx.TASKS)
    assert over >= 6, over


def _write_corpus(root: Path) -> Path:
    records = []
    for i, utt in enumerate(CORPUS):
        rel = f"wavs/{i}.wav"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, utt.wav, RATE, subtype="FLOAT")
        text = ["a cat", "the dog", "one two", "red sun"][i % 4]
        dur = len(utt.wav) / RATE
        records.append(
            {"utt_id": f"u{i}", "audio": rel, "duration": dur, "speaker": utt.speaker, "text": text}
        )
    write_manifest(root / "train.jsonl", records)
    return root / "train.jsonl"


def _write_noises(root: Path) -> Path:
    """A noise folder as `nclm data manifest --layout folder` reads it: a 1 s recording at
    another rate (resampled on load), and a 0.1 s Ogg Vorbis one (.oga, as Debian's sound themes
    ship them) that draws must loop."""
    t = np.arange(22050) / 22050
    hum = 0.1 * np.sin(2 * np.pi * 120 * t) + 0.05 * np.random.default_rng(0).standard_normal(
        t.size
    )
    (root / "noise" / "hum").mkdir(parents=True)
    sf.write(root / "noise" / "hum" / "hum.wav", hum.astype(np.float32), 22050)
    click = np.zeros(1600, np.float32)
    click[::200] = 0.5
    sf.write(root / "noise" / "hum" / "click.oga", click, RATE, format="OGG", subtype="VORBIS")
    write_manifest(root / "noise.jsonl", manifest_from_folder(root / "noise"))
    return root / "noise.jsonl"


def test_recorded_noise_draws_stretches_of_the_files(tmp_path):
    """Each draw is a contiguous stretch of one file (at the codec's rate), looped when the file
    is shorter, and a function of the rng; in simulation the kind "recorded" mixes it at the
    drawn SNR within 0.1 dB."""
    bank = RecordedNoise(_write_noises(tmp_path), RATE)
    files = [load_audio(p, RATE) for p in bank.paths]
    assert sorted(len(f) for f in files) == [1600, 16000]
    seen = set()
    for k in range(12):
        n = bank.draw(np.random.default_rng(k), 4000)
        np.testing.assert_array_equal(n, bank.draw(np.random.default_rng(k), 4000))
        assert n.shape == (4000,) and n.dtype == np.float32
        for i, f in enumerate(files):
            twice = np.concatenate([f, f, f, f])  # every stretch of the looped file lies in it
            hits = [s for s in range(len(f)) if np.array_equal(twice[s : s + 4000], n)]
            if hits:
                seen.add(i)
                if len(f) >= 4000:  # a long file is cropped, never wrapped
                    assert hits[0] + 4000 <= len(f)
    assert seen == {0, 1}, seen

    cfg = SimConfig(weights={"ns": 1.0}, noise_kinds=("recorded",), noise_manifest="x.jsonl")
    a = simulate(CORPUS, 4, 0, cfg, RATE, 160, bank)
    assert a.info["noise"] == "recorded"
    mix = a.parts["mixture"].astype(np.float64)
    assert abs(N.snr_db(a.target, mix - a.target) - a.info["snr_db"]) < 0.1
    np.testing.assert_array_equal(
        a.parts["mixture"], simulate(CORPUS, 4, 0, cfg, RATE, 160, bank).parts["mixture"]
    )


def test_recorded_noise_errors(tmp_path):
    with pytest.raises(ValueError, match="noise manifest go together"):
        SimConfig(noise_kinds=("pink", "recorded"))
    with pytest.raises(ValueError, match="noise manifest go together"):
        SimConfig(noise_kinds=("pink",), noise_manifest="noise.jsonl")
    write_manifest(
        tmp_path / "gone.jsonl",
        [{"utt_id": "a", "audio": "a.wav", "duration": 1.0, "speaker": "x"}],
    )
    with pytest.raises(AudioError, match=r"gone.jsonl:1: noise .*a.wav"):
        RecordedNoise(tmp_path / "gone.jsonl", RATE)
    sf.write(tmp_path / "quiet.wav", np.zeros(800, np.float32), RATE)
    write_manifest(
        tmp_path / "q.jsonl",
        [{"utt_id": "q", "audio": "quiet.wav", "duration": 0.05, "speaker": "x"}],
    )
    with pytest.raises(AudioError, match="quiet.wav is silent"):
        RecordedNoise(tmp_path / "q.jsonl", RATE).draw(np.random.default_rng(0), 100)


def test_shards_resume_byte_identical_and_read_back(tmp_path):
    cfg = config.tiny("dac")
    NeuralCodec(cfg, init_codec(cfg, jax.random.PRNGKey(0))).save(tmp_path / "codec")
    manifest = _write_corpus(tmp_path)
    noise = str(_write_noises(tmp_path))
    sim = SimConfig(noise_kinds=("pink", "recorded"), noise_manifest=noise)
    kw = dict(
        num_examples=10,
        seed=3,
        shard_size=4,
        batch_size=8,
        progress=False,
        frontend="graphemes",
        cfg=sim,
    )
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    simulate_tokens(tmp_path / "codec", manifest, whole, **kw)
    assert simulate_tokens(tmp_path / "codec", manifest, crashed, stop_after_shards=1, **kw)[
        "stopped"
    ]
    assert not (crashed / "index.json").exists()
    simulate_tokens(tmp_path / "codec", manifest, crashed, **kw)
    files = sorted(p.name for p in whole.iterdir())
    assert files == sorted(p.name for p in crashed.iterdir())
    for name in files:
        assert (whole / name).read_bytes() == (crashed / name).read_bytes(), name
    index = json.loads((whole / "index.json").read_text())
    assert sum(index["tasks"]["counts"].values()) == 10

    batches = make_eval_batches(whole, (128, 256), (128, 256), 100_000, host_index=0, host_count=1)
    rows = [(b, r) for b in batches for r in range(len(b["code_len"])) if b["code_len"][r]]
    assert len(rows) == 10
    for b, r in rows:
        n = b["text_len"][r]
        kind, text = b["prefix_kind"][r, :n], b["text"][r, :n]
        tokens = text[kind == sx.KIND_TOKEN]
        task = sx.TASKS[b["task"][r]]
        want = {"tts": [], "ns": [1], "sr": [2], "tse": [3], "cse": [4, 5, 6], "nse": [4, 6]}
        assert list(tokens) == want[task]
        frames = b["prefix_codes"][r][:, :n][:, kind == sx.KIND_FRAME]
        assert frames.shape[1] == (kind == sx.KIND_FRAME).sum()
