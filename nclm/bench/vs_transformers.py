"""The reference for `nclm bench lm-decode|lm-train --vs transformers`: a transformers Llama
(torch, CPU) matched to a CodecLM preset, and this machine's memory read bandwidth.

Matched: width, depth, heads, key/value heads; the gated MLP's intermediate size is 2F/3 so a
layer holds as many weights as ours (4 D^2 + 2 D F); the vocabulary is the AR head's (codes +
EOS), untied. Llama uses RMSNorm and a gated SiLU MLP where we use (AdaLN) LayerNorm and GELU:
the same matmul shapes and weight bytes, which is what decoding speed depends on.

Weight-read floor: a cached decoding step reads every backbone weight and the AR head once,
plus the KV cache so far, whatever the batch; at batch 1 it cannot run faster than
bandwidth / bytes read per step. The bandwidth is NumPy sums over ~200 MB, a slice per CPU in
parallel threads (best of 5), in the same process.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def read_bandwidth(num_bytes: int = 200_000_000, repeats: int = 5) -> float:
    """Bytes/s of NumPy float32 sums over `num_bytes`, one slice per CPU in parallel threads (as
    XLA's and torch's thread pools read; NumPy drops the GIL in the sum), best of `repeats`."""
    threads = os.cpu_count() or 1
    a = np.ones(num_bytes // 4, np.float32)
    parts = np.array_split(a, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = min(best, time.perf_counter() - start)
    return a.nbytes / best


def llama_like(cfg, max_len: int, dtype: str = "float32"):
    """A randomly initialised transformers LlamaForCausalLM matched to LMConfig `cfg`, eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=cfg.codebook_size + 1,
        hidden_size=cfg.width,
        intermediate_size=round(2 * cfg.ffn / 3),
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=max_len,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    return model.to(getattr(torch, dtype))


def backbone_params(model) -> int:
    """Weights a Llama decoding step reads: the layers, the final norm and the LM head."""
    inner = sum(p.numel() for p in model.model.layers.parameters())
    return inner + model.model.norm.weight.numel() + model.lm_head.weight.numel()


def llama_decode(model, ids, steps: int):
    """Prefill over ids[B, C], then steps - 1 cached greedy steps (as `ar_generate` with
    max_new = steps: the prefill yields code 0). Returns the last token [B]."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        cache, tok = out["cache"], out.logits[:, -1].argmax(-1)
        for _ in range(steps - 1):
            out = model(input_ids=tok[:, None], cache=cache, use_cache=True)
            cache, tok = out["cache"], out.logits[:, -1].argmax(-1)
    return tok


def llama_train_step(model, batch: int, length: int):
    """() -> float: one AdamW step of causal-LM cross-entropy on random ids[batch, length]."""
    import torch

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=gen)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        return float(loss)

    return step
