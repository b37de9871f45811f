import json

import numpy as np
import pytest
import soundfile as sf

from nclm.cli import main
from nclm.eval.valle_list import make_lists

SR = 16000


def _librispeech(root):
    """test-clean/SPEAKER/CHAPTER/*.flac + trans.txt; durations chosen around the 4-10 s rule."""
    layout = {
        ("61", "70968"): [3.0, 4.0, 8.0, 10.5],  # 4.0 and 8.0 kept; 3.0 s is the nearest prompt
        ("121", "127105"): [6.0],  # kept, but the speaker has nothing else to prompt with
        ("237", "134493"): [12.0, 2.5, 5.0, 9.0],
    }
    rng = np.random.default_rng(0)
    for (speaker, chapter), seconds in layout.items():
        folder = root / "test-clean" / speaker / chapter
        folder.mkdir(parents=True)
        lines = []
        for i, s in enumerate(seconds):
            utt = f"{speaker}-{chapter}-{i:04d}"
            sf.write(folder / f"{utt}.flac", 0.1 * rng.standard_normal(int(s * SR)), SR)
            lines.append(f"{utt} WORDS OF UTTERANCE {utt}")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return root / "test-clean"


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_valle_lists_follow_the_protocol_and_are_deterministic(tmp_path, capsys):
    root = _librispeech(tmp_path / "LibriSpeech")
    out = tmp_path / "lists"
    main(["eval", "valle-list", "--librispeech", str(root), "--out", str(out)])
    assert "5 utterances of 4-10 s from 3 speakers" in capsys.readouterr().out
    requests = _read(out / "cross_requests.jsonl")
    rows = _read(out / "cross_rows.jsonl")
    assert [r["id"] for r in rows] == [
        "237-134493-0002", "237-134493-0003", "61-70968-0001", "61-70968-0002",
    ]  # fmt: skip  # sorted ids; 121's only utterance has no other to prompt with
    prompts = [r["prompt"].rsplit("/", 1)[1] for r in requests]
    # nearest 3 s among the speaker's other utterances: 2.5 s for 237, 3.0 s for 61
    assert prompts == ["237-134493-0001.flac"] * 2 + ["61-70968-0000.flac"] * 2
    assert requests[0] == {
        "text": "WORDS OF UTTERANCE 237-134493-0002",
        "prompt": str(root / "237" / "134493" / "237-134493-0001.flac"),
        "prompt_text": "WORDS OF UTTERANCE 237-134493-0001",
        "out": "wav/cross/237-134493-0002.wav",
    }
    assert rows[0]["reference"].endswith("237-134493-0002.flac") and rows[0]["task"] == "tts"

    continuation = _read(out / "continuation_rows.jsonl")
    assert [r["id"] for r in continuation] == [
        "121-127105-0000", "237-134493-0002", "237-134493-0003", "61-70968-0001", "61-70968-0002",
    ]  # fmt: skip
    clip, sr = sf.read(out / continuation[0]["prompt"])
    original, _ = sf.read(continuation[0]["reference"])
    assert sr == SR and clip.shape == (3 * SR,)
    np.testing.assert_allclose(clip, original[: 3 * SR], atol=1 / 32768)  # 16-bit wav

    before = {p.name: p.read_bytes() for p in out.glob("*.jsonl")}
    make_lists(root, out)
    assert before == {p.name: p.read_bytes() for p in out.glob("*.jsonl")}


def test_valle_list_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="no such corpus directory"):
        make_lists(tmp_path / "missing", tmp_path / "out")
    root = tmp_path / "short" / "1" / "2"
    root.mkdir(parents=True)
    sf.write(root / "1-2-0000.flac", np.zeros(SR), SR)
    (root / "1-2.trans.txt").write_text("1-2-0000 HELLO\n")
    with pytest.raises(ValueError, match="no transcribed utterances of 4-10 s"):
        make_lists(tmp_path / "short", tmp_path / "out")
    with pytest.raises(ValueError, match="--prompt-seconds"):
        make_lists(tmp_path / "short", tmp_path / "out", prompt_seconds=5)
