"""`nclm tts` end to end on a tiny random codec (DAC-style, 16 kHz, hop 320, 4 x 256 codes) and a
tiny random LM (graphemes), through `nclm.cli.main`; every bad input fails with one line before
any weights load.

The LM records max_audio_frames = 160 (so prompts up to 80 frames = 1.6 s) and every run uses a
1 s prompt (50 frames): the single-request runs share one AR and one NAR program, and the masked
runs (TEXT's sentences estimated at 64 and 45 frames, or --target-seconds 0.5) one masked one.
"""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from nclm.cli import main
from nclm.decode.sampling import SamplingConfig
from nclm.tasks.data_parallel import devices_for
from nclm.tasks.tts import SENTENCE_GAP_SECONDS, Request, Synthesizer, split_sentences
from tests.tasks.tiny_checkpoints import write_tiny_checkpoints

SR, HOP = 16000, 320
GAP = round(SENTENCE_GAP_SECONDS * SR)
CORPUS = ["The quick brown fox jumps over the lazy dog.", "Hello world! Is it raining; yes?"]
PROMPT_TEXT = "hello there"
TEXT = "The dog jumps. Hello fox!"  # two sentences


def _voice(seconds: float, sample_rate: int = SR, f0: float = 130.0) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * 5 * t))) / sample_rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    return (0.2 * envelope * sum(np.sin(k * phase) / k for k in range(1, 6))).astype(np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tts")
    write_tiny_checkpoints(root, CORPUS, {"max_text_tokens": 96, "max_audio_frames": 160})
    sf.write(root / "voice.wav", _voice(1.0), SR)
    return root


def _tts(root, *extra: str) -> list[str]:
    return ["tts", "--lm", str(root / "lm"), "--codec", str(root / "codec"), *extra]


def _single(root, out, text=TEXT, prompt="voice.wav", *extra: str) -> list[str]:
    return _tts(
        root, "--text", text, "--prompt", str(root / prompt), "--prompt-text", PROMPT_TEXT,
        "--out", str(out), *extra,
    )  # fmt: skip


def test_plan_layout_and_limits(setup):
    """Text ids = BOS, transcript, word boundary, sentence, EOS; max_new from the text length,
    capped by max_audio_frames minus the prompt."""
    synth = Synthesizer(setup / "lm", setup / "codec")
    plan = synth.plan([Request("Hi. The dog!", setup / "voice.wav", PROMPT_TEXT)])
    assert split_sentences("Hi.  The dog!  3.5 ok ?") == ["Hi.", "The dog!", "3.5 ok ?"]
    assert [s.text[0] for s in plan.segments] == [1, 1] and plan.segments[0].text[-1] == 2
    prompt_ids = synth.symbols.encode(list(PROMPT_TEXT))
    words = synth.symbols.encode(list(" hi."))
    np.testing.assert_array_equal(plan.segments[0].text[1:-1], np.r_[prompt_ids, words])
    assert [s.max_new for s in plan.segments] == [16 * 3, 160 - 50]
    assert synth.plan([Request("Hi.", setup / "voice.wav", "x")], max_seconds=1.0).segments[
        0
    ].max_new == round(1.0 * SR / HOP)
    # masked: the prompt's 50 frames / 11 transcript tokens x the sentence's tokens, or the target
    request = Request("Hi. The dog!", setup / "voice.wav", PROMPT_TEXT)
    masked = synth.plan([request], mode="masked")
    assert [s.max_new for s in masked.segments] == [round(50 / 11 * 3), round(50 / 11 * 8)]
    masked = synth.plan([request], mode="masked", target_seconds=4.0)
    assert [s.max_new for s in masked.segments] == [160 - 50] * 2  # capped like AR's max_new


def test_a_codec_reading_the_trained_codes_is_accepted(setup, tmp_path):
    """A codec whose codec.json says it reads the codes of the LM's codec (`codes_of`: Vocos on
    EnCodec's encoder and codebooks) loads for that LM; another codec is refused by name."""
    meta = json.loads((setup / "codec" / "codec.json").read_text())
    for name, codes_of in (("reads", meta["codec_id"]), ("other", "tiny_x-000000000000")):
        codec = tmp_path / name
        shutil.copytree(setup / "codec", codec)
        edited = {**meta, "codec_id": "tiny_dac_vocos-111111111111", "codes_of": codes_of}
        (codec / "codec.json").write_text(json.dumps(edited))
        if name == "reads":
            assert Synthesizer(setup / "lm", codec).codec_id == "tiny_dac_vocos-111111111111"
        else:
            with pytest.raises(ValueError, match=f"trained on codes of codec {meta['codec_id']}"):
                Synthesizer(setup / "lm", codec)


@pytest.mark.parametrize("mode", ["ar", "masked", "ar+masked"])
def test_tts_writes_speech_deterministically(setup, capsys, mode):
    outs = [setup / f"out_{mode}_{name}.wav" for name in ("a", "b", "c")]
    for out, seed in zip(outs, ("0", "0", "1")):
        main(
            _single(setup, out, TEXT, "voice.wav", "--seed", seed, "--top-k", "50", "--mode", mode)
        )
    printed = capsys.readouterr().out
    assert printed.count("wrote") == 3
    a, b, c = (sf.read(out, dtype="float32") for out in outs)
    assert a[1] == SR and len(a[0]) > GAP
    assert (len(a[0]) - GAP) % HOP == 0  # two sentences joined by the gap, whole frames each
    np.testing.assert_array_equal(a[0], b[0])
    assert len(a[0]) != len(c[0]) or not np.array_equal(a[0], c[0])
    if mode == "masked":  # 64 + 45 estimated frames; 16 + 1 + 1 + 1 passes per sentence
        assert len(a[0]) == (64 + 45) * HOP + GAP and "; 38 masked decoding passes" in printed
    if mode == "ar+masked":  # levels 2..4, one pass each
        assert "; 6 masked decoding passes" in printed


def test_the_prompt_conditions_the_output(setup, capsys):
    """Masked mode, the same text, seed and prompt length, another voice (f0 210 Hz, not 130):
    the prompt's codes reach the LM, so the speech differs, at the length estimated from the
    prompt's 50 frames and 11 transcript tokens (64 + 45 frames, as for the first voice)."""
    sf.write(setup / "voice_high.wav", _voice(1.0, f0=210.0), SR)
    flags = ["--seed", "0", "--top-k", "50", "--mode", "masked"]  # the determinism test's program
    wavs = []
    for prompt in ("voice.wav", "voice_high.wav"):
        out = setup / f"cond_{prompt}"
        main(_single(setup, out, TEXT, prompt, *flags))
        wavs.append(sf.read(out, dtype="float32")[0])
    assert len(wavs[0]) == len(wavs[1]) == (64 + 45) * HOP + GAP
    assert np.abs(wavs[0] - wavs[1]).max() > 1e-3


def test_target_seconds_sets_the_masked_length(setup, capsys):
    out = setup / "target.wav"
    flags = ["--mode", "masked", "--target-seconds", "0.5", "--top-k", "50"]  # a compiled bucket
    main(_single(setup, out, TEXT, "voice.wav", *flags))
    wav, rate = sf.read(out, dtype="float32")
    assert rate == SR and len(wav) == 2 * 25 * HOP + GAP  # 25 frames per sentence


def test_tts_batch_mode_spreads_a_batch_over_devices(setup, capsys, monkeypatch):
    """The 4 sentences of 3 requests share one bucket (4 rows): by default its rows are split over
    4 of the 8 fake devices (parameters replicated), and the speech equals `--devices 1`'s
    sample for sample. `batch_devices` comes from the sharding of the decoder's output."""
    sf.write(setup / "voice2.wav", _voice(0.9), SR)
    requests = [
        {"text": TEXT, "prompt": "voice.wav", "prompt_text": PROMPT_TEXT, "out": "1.wav"},
        {"text": "Hello.", "prompt": "voice2.wav", "prompt_text": "hello", "out": "2.flac"},
        {"text": "The fox", "prompt": "voice.wav", "prompt_text": PROMPT_TEXT, "out": "3.wav"},
    ]
    used, run = [], Synthesizer.run
    monkeypatch.setattr(Synthesizer, "run", lambda self, *a: (run(self, *a), used.append(self))[0])
    wavs = {}
    for folder, devices in (("b", []), ("b1", ["--devices", "1"])):
        jsonl = setup / f"requests_{folder}.jsonl"
        lines = [json.dumps({**r, "out": f"{folder}/{r['out']}"}) for r in requests]
        jsonl.write_text("".join(line + "\n" for line in lines))
        main(
            _tts(
                setup, "--batch", str(jsonl), "--batch-size", "4", "--temperature", "0.8", *devices
            )
        )
        assert capsys.readouterr().out.count("wrote") == 3
        wavs[folder] = [sf.read(setup / folder / r["out"], dtype="float32") for r in requests]
    assert [synth.batch_devices for synth in used] == [[4], [1]]
    lengths = []
    for (wav, rate), (wav1, _) in zip(wavs["b"], wavs["b1"]):
        assert rate == SR and len(wav) > 0
        np.testing.assert_array_equal(wav, wav1)
        lengths.append(len(wav))
    assert (lengths[0] - GAP) % HOP == 0 and lengths[1] % HOP == 0 and lengths[2] % HOP == 0


def test_masked_batch_spread_over_devices_gives_the_same_speech(setup):
    """Masked decoding (guided: the batch doubles inside) of 4 requests on 4 devices equals the
    1-device decode. A single request stays on one device (`devices_for`)."""
    texts = ["The dog jumps.", "Hello fox!", "The quick fox.", "Is it raining?"]
    requests = [Request(t, setup / "voice.wav", PROMPT_TEXT) for t in texts]
    options = {"sampling": SamplingConfig(top_k=50), "mode": "masked", "target_seconds": 0.5}
    wavs = {}
    for devices in (1, 4):
        synth = Synthesizer(setup / "lm", setup / "codec", batch_size=4, devices=devices)
        wavs[devices] = synth.synthesize_batch(requests, seed=3, **options)
        assert synth.batch_devices == [devices]
    assert all(len(w) == 25 * HOP for w in wavs[4])
    for one, four in zip(wavs[1], wavs[4]):
        np.testing.assert_array_equal(one, four)
    assert len({w.tobytes() for w in wavs[4]}) == 4  # four texts, four different utterances
    rows_devices = [(1, 8), (2, 8), (4, 8), (8, 8), (16, 8), (8, 4), (6, 8), (4, 1), (3, 8)]
    assert [devices_for(*rd) for rd in rows_devices] == [1, 2, 4, 8, 8, 4, 2, 1, 1]


def test_resample_flag(setup, capsys):
    sf.write(setup / "voice_22k.wav", _voice(1.0, 22050), 22050)
    line = _fails(capsys, _single(setup, setup / "r.wav", TEXT, "voice_22k.wav"))
    assert "22050 Hz" in line and "16000 Hz" in line and "--resample" in line
    main(_single(setup, setup / "r.wav", TEXT, "voice_22k.wav", "--resample"))
    assert sf.info(setup / "r.wav").samplerate == SR


def _fails(capsys, argv: list[str], *names: str) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nclm: error: "), err
    for name in names:
        assert name in lines[0], (name, err)
    return lines[0]


def _bad_inputs(root) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    (root / "junk.wav").write_text("not audio")
    sf.write(root / "long.wav", _voice(2.0), SR)
    other = root / "lm_other"
    if not other.exists():
        shutil.copytree(root / "lm", other)
        meta = json.loads((other / "lm.json").read_text())
        meta["codec"]["codec_id"] = "tiny_dac_waveform-000000000000"
        (other / "lm.json").write_text(json.dumps(meta))
    (root / "bad.jsonl").write_text('{"text": "hi", "prompt": "voice.wav"}\n')
    out = root / "never.wav"
    no_transcript = _tts(root, "--text", "hi", "--prompt", str(root / "voice.wav"))
    return {
        "empty text": (_single(root, out, "   "), ("--text", "empty")),
        "missing prompt": (_single(root, out, "hi", "nope.wav"), ("nope.wav", "no such")),
        "unreadable prompt": (_single(root, out, "hi", "junk.wav"), ("junk.wav", "readable")),
        "long prompt": (_single(root, out, "hi", "long.wav"), ("2.00 s", "at most 1.60 s")),
        "codec mismatch": (
            _single(root, out) + ["--lm", str(other)],
            ("--codec", "trained on codes of codec tiny_dac_waveform-000000000000"),
        ),
        "unknown symbol": (
            _single(root, out, "snow ☃"),
            ("unknown symbol", "'☃'", "--text", "spell them out"),
        ),
        "no transcript": (no_transcript + ["--out", str(out)], ("--prompt-text", "transcript")),
        "bad output": (_single(root, root / "x.mp4"), ("x.mp4", "extension")),
        "bad sampling": (_single(root, out, "hi", "voice.wav", "--top-p", "0"), ("--top-p",)),
        "too many devices": (_single(root, out) + ["--devices", "9"], ("--devices 9", "1 to 8")),
        "no devices": (_single(root, out) + ["--devices", "0"], ("--devices 0", "1 to 8")),
        "batch keys": (
            _tts(root, "--batch", str(root / "bad.jsonl")),
            ("bad.jsonl:1", "missing ['prompt_text', 'out']"),
        ),
        "bad iterations": (_masked(root, out, "--iterations", "16,0"), ("--iterations 16,0",)),
        "iterations syntax": (_masked(root, out, "--iterations", "16;1"), ("e.g. 16,1",)),
        "too many iterations": (
            _masked(root, out, "--iterations", "4,1,1,1,1"),
            ("--iterations", "4 codebook levels"),
        ),
        "bad guidance": (_masked(root, out, "--guidance", "up"), ("--guidance up", "ramp_up")),
        "masked flag in ar mode": (
            _single(root, out, "hi", "voice.wav", "--span", "3"),
            ("--span", "--mode masked"),
        ),
        "target in ar mode": (
            _single(root, out, "hi", "voice.wav", "--target-seconds", "1"),
            ("--target-seconds", "--mode ar", "--max-seconds"),
        ),
    }


def _masked(root, out, *extra: str) -> list[str]:
    return _single(root, out, "hi", "voice.wav", "--mode", "masked", *extra)


@pytest.mark.parametrize(
    "case",
    [
        "empty text",
        "missing prompt",
        "unreadable prompt",
        "long prompt",
        "codec mismatch",
        "unknown symbol",
        "no transcript",
        "bad output",
        "bad sampling",
        "too many devices",
        "no devices",
        "batch keys",
        "bad iterations",
        "iterations syntax",
        "too many iterations",
        "bad guidance",
        "masked flag in ar mode",
        "target in ar mode",
    ],
)
def test_bad_input_fails_in_one_line_before_model_work(setup, capsys, monkeypatch, case):
    def no_model(self):
        raise AssertionError("weights loaded before the inputs were checked")

    monkeypatch.setattr(Synthesizer, "_load", no_model)
    argv, names = _bad_inputs(setup)[case]
    _fails(capsys, argv, *names)
    assert not (setup / "never.wav").exists()
