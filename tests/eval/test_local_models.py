"""A local transformers checkpoint as recognizer (CTC) and speaker encoder (WavLM x-vector):
tiny random models saved here stand in for HuBERT-large or wavlm-base-plus-sv directories, so
these check loading, dispatch and identities, not accuracy."""

import json

import numpy as np
import pytest

from nclm.cli import main
from nclm.eval.extra import file_digest
from nclm.eval.recognizers import TransformersCTC, load_recognizer
from nclm.eval.speaker_sim import WavLMSpeakerVerification, cosine, load_speaker_encoder

SMALL = dict(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
    conv_dim=(32, 32), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)  # fmt: skip
LETTERS = "abcdefghijklmnopqrstuvwxyz'"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    import torch
    import transformers as tf

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate(LETTERS)}}
    (root / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = tf.Wav2Vec2CTCTokenizer(str(root / "vocab.json"), word_delimiter_token="|")
    features = tf.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True)
    ctc = tf.Wav2Vec2ForCTC(tf.Wav2Vec2Config(vocab_size=len(vocab), pad_token_id=0, **SMALL))
    ctc.save_pretrained(root / "ctc")
    tf.Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(
        root / "ctc"
    )
    config = tf.WavLMConfig(tdnn_dim=(32, 32), tdnn_kernel=(5, 3), tdnn_dilation=(1, 2),
                            xvector_output_dim=16, **SMALL)  # fmt: skip
    tf.WavLMForXVector(config).save_pretrained(root / "sv")
    features.save_pretrained(root / "sv")
    tf.WavLMModel(tf.WavLMConfig(**SMALL)).save_pretrained(root / "not_sv")
    return root


def test_a_local_ctc_directory_is_the_recognizer(checkpoints, speech, tmp_path, capsys):
    asr = load_recognizer(checkpoints / "ctc")
    assert isinstance(asr, TransformersCTC)
    assert asr.identity["sha256"] == file_digest(checkpoints / "ctc" / "model.safetensors")
    heard = asr.transcribe(np.random.default_rng(0).standard_normal(16000).astype(np.float32))
    assert set(heard) <= set(LETTERS + " <unk>")  # random weights: letters, no meaning
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"audio": str(speech["slt", 0]), "text": "glue the sheet"}) + "\n")
    main(["eval", "score", str(rows), "--task", "tts", "--metrics", "wer", "--no-progress",
          "--recognizer", str(checkpoints / "ctc"), "--out", str(tmp_path / "eval")])  # fmt: skip
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["evaluators"]["recognizer"]["name"] == "transformers-ctc"
    assert summary["tasks"]["tts"]["metrics"]["wer"]["count"] == 1
    assert "nclm: error" not in capsys.readouterr().err


def test_a_local_wavlm_xvector_directory_is_the_speaker_encoder(checkpoints, speech):
    from nclm.audio.io import load_audio

    encoder = load_speaker_encoder(checkpoints / "sv")
    assert isinstance(encoder, WavLMSpeakerVerification)
    a, b = (encoder.embed(load_audio(speech[voice, 0], 16000)) for voice in ("slt", "awb"))
    assert a.shape == (16,) and np.linalg.norm(a) == pytest.approx(1.0)
    assert cosine(a, encoder.embed(load_audio(speech["slt", 0], 16000))) == pytest.approx(1.0)
    assert cosine(a, b) < 0.9999
    assert encoder.embed(np.zeros(16000, np.float32)) is None


def test_unusable_model_directories_are_one_line(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="expected 'pocketsphinx' or a local transformers"):
        load_recognizer(tmp_path)
    with pytest.raises(ValueError, match="expected 'resemblyzer' or a local transformers"):
        load_speaker_encoder(tmp_path / "nothing")
    with pytest.raises(ValueError, match="architectures .*WavLMModel.*expected WavLMForXVector"):
        load_speaker_encoder(checkpoints / "not_sv")
