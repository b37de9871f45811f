"""CodecLM settings as a frozen dataclass with named presets; round-trips through JSON.

Audio token ids per level: 0..V-1 are codes, then the specials below. Stages (AdaLN rows) are
codebook levels: stage q-1 conditions the prediction of level q (AR: level 1, stage 0).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from nclm.config import dataclass_from_dict
from nclm.nn.attention import IMPLEMENTATIONS
from nclm.nn.projection import LAYOUTS
from nclm.nn.transformer import REMAT_POLICIES, StackConfig

NUM_AUDIO_SPECIALS = 4  # EOS, BOS, MASK, PAD after the V codes of each level


@dataclass(frozen=True)
class LMConfig:
    name: str = "valle"
    num_codebooks: int = 8
    codebook_size: int = 1024
    text_vocab_size: int = 256  # set from the symbol table of the token corpus
    num_tasks: int = 8  # task embedding rows (SpeechX); 0 is TTS
    # > 0: semantic token ids (k-means of HuBERT/WavLM features, one per frame) condition the
    # masked decoder, their embedding added to each frame (SoundStorm); row K is the null id
    semantic_vocab_size: int = 0
    num_layers: int = 12
    width: int = 1024
    num_heads: int = 16
    num_kv_heads: int = 16
    ffn: int = 4096
    dropout: float = 0.1
    # True: AR (causal) and NAR (bidirectional) run one backbone; False: two stacks in the tree.
    shared_backbone: bool = True
    # > 0: a Conformer convolution module in every layer, run by the bidirectional passes (NAR,
    # masked) and skipped by the causal AR pass (a centered conv would see the future)
    conv_kernel: int = 0
    rope_base: float = 10000.0
    scan_layers: bool = True
    # nclm.nn.projection.LAYOUTS: checkpoints and training are in_out; nclm.lm.model.for_decoding
    # makes the out_in (and unrolled) form that cached decoding runs
    kernel_layout: str = "in_out"
    remat: str = "none"  # one of nclm.nn.transformer.REMAT_POLICIES
    # nclm.nn.attention.IMPLEMENTATIONS: auto = cuDNN on GPU (16-bit), splash on TPU, blockwise
    # on CPU for long sequences, the dense xla reference for short ones and cached steps
    attention: str = "auto"
    # the AR head's V + 1 columns (codes and EOS) are padded to a multiple of this, so its
    # `vocab` dimension shards over `tensor`; the padding columns' logits are -inf
    vocab_multiple: int = 1

    def __post_init__(self):
        if self.width % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"lm: width {self.width} must divide into num_heads {self.num_heads}, and "
                f"num_heads into num_kv_heads {self.num_kv_heads}"
            )
        if self.attention not in IMPLEMENTATIONS:
            raise ValueError(f"lm.attention={self.attention!r}: expected one of {IMPLEMENTATIONS}")
        if self.kernel_layout not in LAYOUTS:
            raise ValueError(f"lm.kernel_layout={self.kernel_layout!r}: expected one of {LAYOUTS}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"lm.remat={self.remat!r}: expected one of {sorted(REMAT_POLICIES)}")
        if self.vocab_multiple < 1:
            raise ValueError(f"lm.vocab_multiple={self.vocab_multiple}: expected >= 1")
        if self.num_codebooks < 1 or self.codebook_size < 2:
            raise ValueError("lm: need num_codebooks >= 1 and codebook_size >= 2")

    # -- special audio ids (per level) ---------------------------------------------------------
    @property
    def eos_id(self) -> int:
        return self.codebook_size

    @property
    def bos_id(self) -> int:
        return self.codebook_size + 1

    @property
    def mask_id(self) -> int:
        return self.codebook_size + 2

    @property
    def pad_id(self) -> int:
        return self.codebook_size + 3

    @property
    def semantic_null_id(self) -> int:
        return self.semantic_vocab_size

    @property
    def ar_head_size(self) -> int:
        """The AR head's columns: V codes + EOS, padded to a multiple of `vocab_multiple`."""
        return -(-(self.codebook_size + 1) // self.vocab_multiple) * self.vocab_multiple

    @property
    def audio_vocab_size(self) -> int:
        return self.codebook_size + NUM_AUDIO_SPECIALS

    def stack(self, bidirectional: bool) -> StackConfig:
        return StackConfig(
            num_layers=self.num_layers,
            width=self.width,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            ffn=self.ffn,
            dropout=self.dropout,
            conv_kernel=self.conv_kernel if bidirectional or self.shared_backbone else 0,
            rope_base=self.rope_base,
            num_stages=self.num_codebooks,
            scan_layers=self.scan_layers,
            kernel_layout=self.kernel_layout,
            remat=self.remat,
            attention=self.attention,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LMConfig:
        return dataclass_from_dict(cls, d, "lm")


def valle(num_codebooks: int = 8, codebook_size: int = 1024, **kw) -> LMConfig:
    """VALL-E's size (REFERENCE.md section 5): 12 layers, width 1024, 16 heads, FFN 4096."""
    return LMConfig("valle", num_codebooks, codebook_size, **kw)


def small(num_codebooks: int = 8, codebook_size: int = 1024, **kw) -> LMConfig:
    """A GPU-sized debugging model: 6 layers, width 512, 8 heads."""
    kw = {"num_layers": 6, "width": 512, "num_heads": 8, "num_kv_heads": 8, "ffn": 2048, **kw}
    return LMConfig("small", num_codebooks, codebook_size, **kw)


def tiny(num_codebooks: int = 4, codebook_size: int = 256, **kw) -> LMConfig:
    """A CPU test/quickstart model: 2 layers, width 64, 4 heads."""
    kw = {
        "num_layers": 2,
        "width": 64,
        "num_heads": 4,
        "num_kv_heads": 4,
        "ffn": 256,
        "dropout": 0.0,
        "text_vocab_size": 64,
        **kw,
    }
    return LMConfig("tiny", num_codebooks, codebook_size, **kw)


PRESETS = {"valle": valle, "small": small, "tiny": tiny}
