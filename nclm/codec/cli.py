"""`nclm codec ...`: make, inspect and run codecs (registered by nclm/cli.py).

nclm codec init    --config configs/codec/encodec_24khz.py:tiny --out runs/tiny [--seed N]
nclm codec info    --codec runs/tiny [--json]
nclm codec encode  --codec runs/tiny IN OUT [--levels N] [--batch-size B]
nclm codec decode  --codec runs/tiny IN.npz OUT.wav [--levels N]
nclm codec convert --from transformers SRC_DIR --out DIR
nclm codec convert --from vocos VOCOS_DIR --encodec ENCODEC_DIR --out DIR
nclm codec eval    --codec runs/tiny --manifest valid.jsonl [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nclm.cli_args import command_group, set_command

CODES_FORMAT = "codes int32[Q, T], sample_rate, frame_rate, codec_id, num_samples"


# -- nclm codec ---------------------------------------------------------------------------------


def register(groups: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Adds `nclm codec ...`; returns its subcommands, to which nclm/cli.py adds `codec eval`
    (nclm/eval sits above codec: codec never imports it)."""
    help_text = "make, inspect and run neural audio codecs"
    sub = command_group(groups, "codec", help_text, "codec commands")

    p = sub.add_parser("init", help="a randomly initialised codec checkpoint from a config")
    p.add_argument(
        "--config",
        required=True,
        metavar="FILE.py[:ARG]",
        help="experiment config (or a saved config.json); --config.key=value overrides",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory to create")
    p.add_argument("--seed", type=int, help="random seed (default: the config's seed)")
    p.add_argument("--force", action="store_true", help="replace an existing codec checkpoint")
    set_command(p, _codec_init, overrides=True)

    p = sub.add_parser("info", help="print a codec checkpoint's facts")
    p.add_argument("--codec", required=True, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print JSON")
    set_command(p, _codec_info)

    p = sub.add_parser(
        "encode",
        help="audio file or directory -> codes (.npz)",
        description=f"Writes one .npz per audio file holding {CODES_FORMAT}.",
    )
    p.add_argument("--codec", required=True, metavar="DIR")
    p.add_argument("input", metavar="IN", help="audio file, or directory scanned recursively")
    p.add_argument(
        "output",
        metavar="OUT",
        help=".npz file (file input) or directory mirroring IN (directory input)",
    )
    p.add_argument("--levels", type=int, metavar="N", help="keep the first N levels (default: all)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        metavar="B",
        help="files per batch; files of similar length are batched together",
    )
    set_command(p, _codec_encode)

    p = sub.add_parser("decode", help="codes (.npz) -> audio file")
    p.add_argument("--codec", required=True, metavar="DIR")
    p.add_argument("input", metavar="IN.npz")
    p.add_argument("output", metavar="OUT.wav", help="format from the extension (.wav, .flac...)")
    p.add_argument("--levels", type=int, metavar="N", help="decode the first N levels only")
    set_command(p, _codec_decode)

    p = sub.add_parser("convert", help="published weights -> nclm codec checkpoint")
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        choices=["transformers", "vocos"],
        help="source format: a transformers EnCodec/DAC save_pretrained directory, or a "
        "Vocos-EnCodec directory (config.yaml + pytorch_model.bin, e.g. charactr/"
        "vocos-encodec-24khz) decoding the codes of the --encodec model",
    )
    p.add_argument("src", metavar="SRC_DIR")
    p.add_argument(
        "--encodec",
        metavar="DIR",
        help="with --from vocos: the transformers EnCodec directory (e.g. facebook/encodec_24khz) "
        "whose encoder and codebooks the codec uses",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory to create")
    p.add_argument("--force", action="store_true", help="replace an existing codec checkpoint")
    set_command(p, _codec_convert)
    return sub


def _codec_init(args: argparse.Namespace, overrides: list[str]) -> None:
    from nclm.codec.experiment import codec_config_from
    from nclm.config import load_config, save_config

    cfg = load_config(args.config, overrides)
    if args.seed is not None:
        cfg.seed = args.seed
    seed = int(cfg.get("seed", 0))
    codec_cfg = codec_config_from(cfg)
    out = _new_checkpoint_dir(args.out, args.force)

    import jax

    from nclm.codec.checkpoint import save_codec
    from nclm.codec.model import init_codec, num_params

    variables = init_codec(codec_cfg, jax.random.PRNGKey(seed))
    cid = save_codec(out, codec_cfg, variables)
    save_config(cfg, out / "config.json")
    print(f"{cid}: {num_params(variables):,} parameters -> {out}")


def _codec_info(args: argparse.Namespace) -> None:
    from nclm.codec.checkpoint import load_codec
    from nclm.codec.model import num_params

    meta, cfg = _read_codec(args.codec)
    _, variables, cid = load_codec(args.codec)
    facts = {
        "name": cfg.name,
        "codec_id": cid,
        "sample_rate": cfg.sample_rate,
        "hop_length": cfg.hop_length,
        "frame_rate": cfg.frame_rate,
        "num_codebooks": cfg.num_codebooks,
        "codebook_size": cfg.codebook_size,
        "bitrate_kbps": cfg.bitrate() / 1000,
        "num_params": num_params(variables),
    }
    if meta.get("codes_of"):  # another decoder on that codec's encoder and codebooks
        facts["codes_of"] = meta["codes_of"]
    if args.json:
        print(json.dumps(facts, indent=2))
        return
    rows = [
        ("name", cfg.name),
        ("codec id", cid),
        ("sample rate", f"{cfg.sample_rate} Hz"),
        ("hop", f"{cfg.hop_length} samples"),
        ("frame rate", f"{cfg.frame_rate:g} Hz"),
        ("codebooks (Q)", cfg.num_codebooks),
        ("codebook size", cfg.codebook_size),
        ("bitrate", f"{facts['bitrate_kbps']:g} kbps ({cfg.num_codebooks} levels)"),
        ("parameters", f"{facts['num_params']:,}"),
    ]
    if "codes_of" in facts:
        rows.append(("reads codes of", facts["codes_of"]))
    for key, value in rows:
        print(f"{key:<15} {value}")


def _codec_encode(args: argparse.Namespace) -> None:
    from nclm.audio.io import AUDIO_EXTENSIONS, AudioError, audio_info

    _, cfg = _read_codec(args.codec)
    _check_levels(args.levels, cfg.num_codebooks, f"--levels (codec {args.codec})")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    src, dst = Path(args.input), Path(args.output)
    if src.is_dir():
        jobs = _directory_jobs(src, dst, cfg.sample_rate)
    else:
        info = audio_info(src)
        if dst.suffix != ".npz" or dst.is_dir():
            raise ValueError(f"{dst}: expected an output file ending in .npz for input file {src}")
        jobs = [(src, dst, round(info.num_samples * cfg.sample_rate / info.sample_rate))]
    if not jobs:
        exts = ", ".join(AUDIO_EXTENSIONS)
        raise AudioError(f"{src}: no audio files (expected extensions {exts})")
    _encode_jobs(args.codec, cfg.sample_rate, jobs, args.levels, args.batch_size, src.is_dir())
    print(f"encoded {len(jobs)} file{'s' * (len(jobs) != 1)} -> {dst}")


def _directory_jobs(src: Path, dst: Path, sample_rate: int) -> list[tuple[Path, Path, int]]:
    """(input, output, estimated length at `sample_rate`) per audio file under `src`; reads only
    headers, so a bad file fails the command before anything is written."""
    from nclm.audio.io import AUDIO_EXTENSIONS, audio_info

    if dst.exists() and not dst.is_dir():
        raise ValueError(f"{dst}: exists and is not a directory (input {src} is a directory)")
    jobs, claimed = [], {}
    paths = sorted(p for p in src.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    for path in (p for p in paths if p.is_file()):
        out = dst / path.relative_to(src).with_suffix(".npz")
        if out in claimed:
            raise ValueError(f"{claimed[out]} and {path} would both be written to {out}")
        claimed[out] = path
        info = audio_info(path)
        jobs.append((path, out, round(info.num_samples * sample_rate / info.sample_rate)))
    return jobs


def _encode_jobs(
    codec_dir: str,
    sample_rate: int,
    jobs: list[tuple[Path, Path, int]],
    levels: int | None,
    batch_size: int,
    progress: bool,
) -> None:
    """Encodes files in batches of similar length; every batch has the same number of rows (empty
    rows pad the last one) so that batches share compiled programs."""
    import numpy as np
    from tqdm import tqdm

    from nclm.audio.io import load_audio, save_npz_atomic
    from nclm.codec.interface import NeuralCodec

    codec = NeuralCodec.load(codec_dir)
    batches = codec.encode_batches(
        jobs, lambda job: load_audio(job[0], sample_rate), lambda job: job[2], batch_size, levels
    )
    with tqdm(total=len(jobs), unit="file", desc="encode", disable=not progress) as bar:
        for batch in batches:
            for i, ((_, out, _), wav) in enumerate(zip(batch.items, batch.wavs)):
                save_npz_atomic(
                    out,
                    codes=batch.codes[i, :, : batch.frames[i]].astype(np.int32),
                    sample_rate=np.int64(codec.sample_rate),
                    frame_rate=np.float64(codec.frame_rate),
                    codec_id=np.str_(codec.codec_id),
                    num_samples=np.int64(len(wav)),
                )
            bar.update(len(batch.items))


def _codec_decode(args: argparse.Namespace) -> None:
    from nclm.audio.io import output_format, save_audio
    from nclm.codec.checkpoint import reads_codes_of

    meta, cfg = _read_codec(args.codec)
    src, dst = Path(args.input), Path(args.output)
    output_format(dst)
    codes, num_samples, file_id = _read_codes(src)
    if not reads_codes_of(meta, file_id):
        raise ValueError(
            f"{src}: codes were written by codec {file_id}, "
            f"but --codec {args.codec} is {meta['codec_id']}"
        )
    num_levels, num_frames = codes.shape
    _check_levels(num_levels, cfg.num_codebooks, f"{src}: codes levels")
    if codes.min() < 0 or codes.max() >= cfg.codebook_size:
        raise ValueError(
            f"{src}: codes out of range: found [{codes.min()}, {codes.max()}], "
            f"expected 0..{cfg.codebook_size - 1}"
        )
    _check_levels(args.levels, num_levels, f"--levels ({src} has {num_levels} levels)")
    if num_samples is not None and not 0 < num_samples <= num_frames * cfg.hop_length:
        raise ValueError(
            f"{src}: num_samples {num_samples} does not fit {num_frames} frames of "
            f"{cfg.hop_length} samples"
        )

    from nclm.codec.interface import NeuralCodec

    codec = NeuralCodec.load(args.codec)
    wav, _ = codec.decode(codes[None, : args.levels or num_levels])  # [1, T * hop]
    wav = wav[0, :num_samples]
    save_audio(dst, wav, codec.sample_rate)
    print(f"{dst}: {len(wav) / codec.sample_rate:.2f} s at {codec.sample_rate} Hz")


def _read_codes(path: Path):
    """-> (codes int[Q, T], num_samples or None, codec id), checked for shape and type."""
    import zipfile

    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such codes file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an archive")
            data = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile):
        raise ValueError(f"{path}: not a codes .npz file (expected {CODES_FORMAT})") from None
    missing = [key for key in ("codes", "codec_id") if key not in data]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}; expected {CODES_FORMAT}")
    codes = data["codes"]
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(
            f"{path}: codes must be integers of shape [levels, frames], "
            f"got {codes.dtype}{list(codes.shape)}"
        )
    if codes.shape[1] == 0:
        raise ValueError(f"{path}: codes have 0 frames")
    num_samples = int(data["num_samples"]) if "num_samples" in data else None
    return codes.astype(np.int32), num_samples, str(data["codec_id"])


def _codec_convert(args: argparse.Namespace) -> None:
    src = Path(args.src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such directory (expected a {args.source} model dir)")
    if args.source == "vocos":
        if not args.encodec:
            raise ValueError(
                "--from vocos needs --encodec DIR: the transformers EnCodec model whose codes "
                "the Vocos decodes (e.g. a local copy of facebook/encodec_24khz)"
            )
        if not Path(args.encodec).is_dir():
            raise FileNotFoundError(f"--encodec {args.encodec}: no such directory")
    elif args.encodec:
        raise ValueError("--encodec is for --from vocos only")
    out = _new_checkpoint_dir(args.out, args.force)
    if args.source == "vocos":
        from nclm.codec.convert_vocos import convert_vocos

        cid = convert_vocos(src, args.encodec, out)
    else:
        from nclm.codec.convert import convert_transformers

        cid = convert_transformers(src, out)
    print(f"{cid} -> {out}")


# -- shared checks ----------------------------------------------------------------------------


def _read_codec(path: str):
    """(codec.json contents, CodecConfig) without loading weights; CheckpointError if unusable."""
    from nclm.codec.checkpoint import CheckpointError, read_codec_meta
    from nclm.codec.config import CodecConfig

    meta = read_codec_meta(path)
    try:
        cfg = CodecConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{Path(path) / 'codec.json'}: invalid codec config ({e})") from None
    if "codec_id" not in meta:
        raise CheckpointError(f"{Path(path) / 'codec.json'}: no codec_id")
    if not (Path(path) / "variables").is_dir():
        raise CheckpointError(f"{path}: codec checkpoint has no variables/ directory")
    return meta, cfg


def _new_checkpoint_dir(path: str, force: bool) -> Path:
    """An output checkpoint directory: new or empty, or (with --force) an existing checkpoint.
    Never replaces a directory that holds anything else."""
    out = Path(path)
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"--out {out}: exists and is not a directory")
        if any(out.iterdir()):
            if not (out / "codec.json").is_file():
                raise ValueError(f"--out {out}: exists and is not a codec checkpoint")
            if not force:
                raise ValueError(
                    f"--out {out}: a codec checkpoint exists; pass --force to replace it"
                )
    return out


def _check_levels(levels: int | None, most: int, what: str) -> None:
    if levels is not None and not 1 <= levels <= most:
        raise ValueError(f"{what}: expected 1..{most}, got {levels}")
