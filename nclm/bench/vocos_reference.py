"""The published Vocos-EnCodec decoder (the `vocos` package) as a reference, for `nclm bench codec
--model encodec_24khz_vocos` and the parity test (tests/codec/test_convert_vocos.py).

`vocos`'s own dependencies pin torchaudio and encodec, whose wheels are built for another torch,
so it is installed without them (`pip install --no-deps vocos==0.1.0`, as launch/setup.sh does).
Its backbone and iSTFT head need neither: the package is entered without its __init__ (which
imports the feature extractors), and heads.py's one torchaudio import (the mel-scale helpers of a
head not used here) is served, while it loads, by a module whose helpers raise if called.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

BANDWIDTHS = (1.5, 3.0, 6.0, 12.0)  # kbps: 2, 4, 8 and 16 EnCodec levels; AdaLN rows 0..3
PUBLISHED = {  # charactr/vocos-encodec-24khz's config.yaml
    "feature_extractor": (
        "vocos.feature_extractors.EncodecFeatures",
        {
            "encodec_model": "encodec_24khz",
            "bandwidths": list(BANDWIDTHS),
            "train_codebooks": False,
        },
    ),
    "backbone": (
        "vocos.models.VocosBackbone",
        {
            "input_channels": 128,
            "dim": 384,
            "intermediate_dim": 1152,
            "num_layers": 8,
            "adanorm_num_embeddings": len(BANDWIDTHS),
        },
    ),
    "head": (
        "vocos.heads.ISTFTHead",
        {"dim": 384, "n_fft": 1280, "hop_length": 320, "padding": "same"},
    ),
}


def vocos_available() -> bool:
    return importlib.util.find_spec("vocos") is not None


def published_classes() -> tuple[type, type]:
    """(VocosBackbone, ISTFTHead) as the `vocos` package defines them."""
    spec = importlib.util.find_spec("vocos")
    if spec is None:
        raise ImportError('vocos is not installed: pip install --no-deps "vocos==0.1.0"')
    package = types.ModuleType("vocos")
    package.__path__ = list(spec.submodule_search_locations)
    saved = {
        name: sys.modules.get(name)
        for name in (
            "vocos",
            "torchaudio",
            "torchaudio.functional",
            "torchaudio.functional.functional",
        )
    }
    try:
        sys.modules["vocos"] = package
        if importlib.util.find_spec("torchaudio") is None:

            def unused(*args, **kwargs):
                raise NotImplementedError("torchaudio's mel scale is not used by ISTFTHead")

            helpers = types.ModuleType("torchaudio.functional.functional")
            helpers._hz_to_mel = helpers._mel_to_hz = unused
            sys.modules["torchaudio"] = types.ModuleType("torchaudio")
            sys.modules["torchaudio.functional"] = types.ModuleType("torchaudio.functional")
            sys.modules["torchaudio.functional.functional"] = helpers
        for sub in ("modules", "models", "spectral_ops", "heads"):
            sys.modules.pop(f"vocos.{sub}", None)
        models = importlib.import_module("vocos.models")
        heads = importlib.import_module("vocos.heads")
        return models.VocosBackbone, heads.ISTFTHead
    finally:
        for name, module in saved.items():  # leave sys.modules as it was
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for sub in ("modules", "models", "spectral_ops", "heads"):
            sys.modules.pop(f"vocos.{sub}", None)


def config_yaml() -> dict:
    return {
        part: {"class_path": path, "init_args": dict(args)}
        for part, (path, args) in PUBLISHED.items()
    }


def random_vocos(torch, seed: int = 2) -> tuple[Any, Any]:
    """(backbone, head) at the published sizes with random weights, in eval mode. Vocos starts
    every AdaLN row at scale 1 and shift 0 and every bias at 0; here each gets its own values, so
    a wrong row or a bias left out changes the audio."""
    backbone_cls, head_cls = published_classes()
    torch.manual_seed(seed)
    backbone = backbone_cls(**PUBLISHED["backbone"][1]).eval()
    head = head_cls(**PUBLISHED["head"][1]).eval()
    with torch.no_grad():
        for name, p in [*backbone.named_parameters(), *head.named_parameters()]:
            if name.endswith("scale.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith(("shift.weight", "bias")):
                p.copy_(0.1 * torch.randn_like(p))
            elif name.endswith("gamma"):
                p.mul_(1 + torch.rand_like(p))
    return backbone, head


def vocos_state(backbone, head, encodec) -> dict:
    """The state dict a published Vocos-EnCodec file holds: backbone, head and a copy of the
    EnCodec's first 16 codebooks."""
    import torch

    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state |= {f"head.{k}": v for k, v in head.state_dict().items()}
    books = [encodec.quantizer.layers[q].codebook.embed for q in range(16)]
    state["feature_extractor.codebook_weights"] = torch.cat(books).clone()
    return state


def write_vocos_dir(path: Path, state: dict, config: dict) -> None:
    """config.yaml + pytorch_model.bin, as the published directory holds them."""
    import torch
    import yaml

    path.mkdir(parents=True)
    torch.save(state, path / "pytorch_model.bin")
    (path / "config.yaml").write_text(yaml.safe_dump(config))


def reference_decode(torch, encodec, backbone, head, codes, bandwidth_id: int):
    """codes[B, Q, T] (torch long) -> wav[B, T * 320]: EnCodec's quantized latent (the sum of its
    codebook vectors), Vocos's backbone at the bandwidth's AdaLN row, and its iSTFT head."""
    with torch.inference_mode():
        latent = encodec.quantizer.decode(codes.transpose(0, 1))
        return head(backbone(latent, bandwidth_id=torch.tensor([bandwidth_id])))


def converted(encodec, backbone, head) -> tuple[Any, dict]:
    """The nclm codec `nclm codec convert --from vocos` makes of these models: (config, vars)."""
    from nclm.codec.convert_vocos import convert_vocos_dir

    with tempfile.TemporaryDirectory() as tmp:
        encodec.save_pretrained(Path(tmp) / "encodec")
        write_vocos_dir(Path(tmp) / "vocos", vocos_state(backbone, head, encodec), config_yaml())
        return convert_vocos_dir(Path(tmp) / "vocos", Path(tmp) / "encodec")
