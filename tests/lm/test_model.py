"""CodecLM equivalences: cached decoding == full forward, lax loop == step-by-step reference loop,
scanned == unrolled layers, remat == none; full-size presets by eval_shape."""

import dataclasses
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nclm.decode.ar import FIRST_CACHE_FRAMES, ar_generate, cache_allowances
from nclm.decode.nar import nar_generate
from nclm.decode.sampling import SamplingConfig, sample_tokens
from nclm.lm import config as C
from nclm.lm import layout
from nclm.lm.model import CodecLM, for_decoding, init_lm
from nclm.nn import attention as attention_module
from nclm.nn.transformer import init_cache, unstack_layers

CFG = C.tiny(num_codebooks=3, codebook_size=16, text_vocab_size=20)


def _params(cfg=CFG, seed=0):
    return nn.meta.unbox(init_lm(cfg, jax.random.PRNGKey(seed)))["params"]


def _text(lengths, width):
    rng = np.random.default_rng(0)
    text = np.zeros((len(lengths), width), np.int32)
    for b, n in enumerate(lengths):
        text[b, :n] = rng.integers(3, CFG.text_vocab_size, n)
    return jnp.asarray(text), jnp.asarray(lengths, jnp.int32)


# GQA in float32 is tests/nn/test_attention_cache.py's; here bfloat16 with 2 KV heads: logits of
# about +-4 that differ from float32's by 0.03. Cached == full to 0.0 on the CPU (its bf16 dots
# accumulate each element in f32 alike for one token or the whole sequence); 0.03 (~8 bf16 steps
# at 4) leaves room for GPU/TPU blocking, and a wrong cache row or position moves logits by O(1).
CACHED_CASES = {  # shared, conv, KV heads, dtype, attention, (atol, rtol)
    "shared": (True, 0, 4, jnp.float32, "auto", (2e-5, 1e-5)),
    "separate": (False, 0, 4, jnp.float32, "auto", (2e-5, 1e-5)),
    "conformer": (True, 3, 4, jnp.float32, "auto", (2e-5, 1e-5)),
    "bfloat16": (True, 0, 2, jnp.bfloat16, "auto", (0.03, 0.0)),
    "blockwise": (True, 0, 4, jnp.float32, "blockwise", (2e-5, 1e-5)),
}


@pytest.mark.parametrize("case", list(CACHED_CASES))
def test_cached_decoding_equals_full_forward(case, monkeypatch):
    """Prefill + one cached step per token gives the logits of a full causal pass at every audio
    slot, for two rows with different text and prompt lengths (also with a shared Conformer
    backbone, whose causal passes skip the conv; with 2 KV heads for 4 query heads in bf16; and
    with blockwise attention in blocks of 4, so that prefill and full passes cross block
    boundaries). The cached side runs in decoding form (unrolled, out_in kernels), as
    `ar_generate` does; the full pass scanned, in_out, as training does."""
    shared, conv, kv_heads, dtype, attention, (atol, rtol) = CACHED_CASES[case]
    monkeypatch.setattr(attention_module, "_BLOCK", 4)
    cfg = dataclasses.replace(
        CFG, shared_backbone=shared, conv_kernel=conv, num_kv_heads=kv_heads, attention=attention
    )
    params = _params(cfg)
    full_model = CodecLM(cfg, dtype)  # scanned: the full passes, as training runs them
    cfg, cached_params = for_decoding(cfg, params)  # as ar_generate runs it
    model = CodecLM(cfg, dtype)
    apply = jax.jit(model.apply, static_argnames="method")  # one compile per shape
    apply_full = jax.jit(full_model.apply, static_argnames="method")
    text, text_len = _text([5, 3], 6)
    task = jnp.zeros((2,), jnp.int32)
    prompt_len = jnp.asarray([2, 4], jnp.int32)
    steps = 5
    rng = np.random.default_rng(1)
    codes = rng.integers(0, cfg.codebook_size, (2, 4 + steps)).astype(np.int32)
    audio = np.concatenate([np.full((2, 1), cfg.bos_id), codes], axis=1)  # [BOS, c1, ...]
    num_text, num_prompt = text.shape[1], 4
    v = {"params": cached_params}

    size = num_text + 1 + num_prompt + steps
    cache = init_cache(cfg.stack(False), 2, size, dtype)
    prefill_in = np.where(
        np.arange(1 + num_prompt) <= np.asarray(prompt_len)[:, None],
        audio[:, : 1 + num_prompt],
        cfg.pad_id,
    )
    h, cache = apply(
        v,
        text,
        text_len,
        jnp.asarray(prefill_in),
        prompt_len + 1,
        task,
        cache,
        jnp.zeros(2, jnp.int32),
        method=CodecLM.ar_hidden,
    )
    cached = [apply(v, h[:, num_text:], method=CodecLM.ar_project)]
    for k in range(steps):
        # feed each row's next code (audio slot prompt_len + 1 + k) at its own buffer row
        slot = np.asarray(prompt_len) + 1 + k
        tok = jnp.asarray(audio[np.arange(2), slot])
        write = jnp.asarray(num_text + slot, jnp.int32)
        logits, cache = apply(
            v,
            tok,
            text_len + jnp.asarray(slot),
            write,
            layout.cache_step_mask(text_len, num_text, write),
            cache,
            method=CodecLM.ar_step,
        )
        cached.append(logits)

    for b in range(2):  # the full pass over each row's own real sequence
        n_audio = int(prompt_len[b]) + 1 + steps
        full = apply_full(
            {"params": params},
            text[b : b + 1],
            text_len[b : b + 1],
            jnp.asarray(audio[b : b + 1, :n_audio]),
            jnp.asarray([n_audio]),
            task[:1],
            method=CodecLM.ar_logits,
        )[0]
        p = int(prompt_len[b])
        close = partial(np.testing.assert_allclose, atol=atol, rtol=rtol)
        close(np.asarray(cached[0][b, : p + 1], np.float32), np.asarray(full[: p + 1], np.float32))
        for k in range(steps):
            close(np.asarray(cached[k + 1][b], np.float32), np.asarray(full[p + 1 + k], np.float32))


def _reference_loop(params, cfg, text, text_len, prompt, prompt_len, key, max_new, sampling):
    """Step by step, no cache: a full causal pass over each row's whole sequence per token; the
    batch's logits are sampled together, as the loop does (a key draws a whole batch)."""
    model = CodecLM(cfg)
    batch = text.shape[0]
    out = np.full((batch, max_new), cfg.eos_id, np.int32)
    seqs = [[cfg.bos_id, *np.asarray(prompt[b, : prompt_len[b]]).tolist()] for b in range(batch)]
    done = np.zeros(batch, bool)
    width = 1 + prompt.shape[1] + max_new  # one padded shape: a single compile
    for k in range(max_new):
        rows = np.full((batch, width), cfg.pad_id, np.int32)
        for b in range(batch):
            rows[b, : len(seqs[b])] = seqs[b]
        lengths = np.asarray([len(q) for q in seqs], np.int32)
        full = model.apply(
            {"params": params},
            text,
            text_len,
            jnp.asarray(rows),
            jnp.asarray(lengths),
            jnp.zeros(batch, jnp.int32),
            method=CodecLM.ar_logits,
        )  # [B, width, V + 1], causal: slot len-1 never sees the padding after it
        logits = full[jnp.arange(batch), lengths - 1]
        key_k = jax.random.fold_in(key, k)
        tok = np.asarray(
            sample_tokens(key_k, logits, jnp.asarray(out), jnp.full(batch, k), sampling)
        )
        tok = np.where(done, cfg.eos_id, tok)
        out[:, k] = tok
        done |= tok == cfg.eos_id
        for b in range(batch):
            seqs[b].append(int(tok[b]))
        if done.all():
            break
    return out


# FIRST_CACHE_FRAMES: one buffer of 8 new rows; 2: buffers of 2, 4 and 8 (grown while running)
@pytest.mark.parametrize(
    "sampling, first_cache_frames",
    [
        (SamplingConfig(temperature=1.0, top_k=5), FIRST_CACHE_FRAMES),
        (SamplingConfig(top_p=0.8, repetition_aware=True), FIRST_CACHE_FRAMES),
        (SamplingConfig(top_p=0.8, repetition_aware=True), 2),
    ],
)
def test_lax_loop_equals_reference_loop(sampling, first_cache_frames):
    params = _params()
    text, text_len = _text([6, 2, 4], 7)
    prompt = jnp.asarray(np.random.default_rng(2).integers(0, CFG.codebook_size, (3, 5)), jnp.int32)
    prompt_len = jnp.asarray([5, 0, 3], jnp.int32)
    key = jax.random.PRNGKey(7)
    run = partial(
        ar_generate, params, text, text_len, prompt, prompt_len, key, cfg=CFG, max_new=8,
        sampling=sampling, first_cache_frames=first_cache_frames,
    )  # fmt: skip
    codes, lengths = run()
    ref = _reference_loop(params, CFG, text, text_len, prompt, prompt_len, key, 8, sampling)
    np.testing.assert_array_equal(np.asarray(codes), ref)
    for b in range(3):
        eos = np.flatnonzero(ref[b] == CFG.eos_id)
        assert int(lengths[b]) == (eos[0] if len(eos) else 8)
    assert max(int(n) for n in lengths) > 4, "no row reached the last buffer: choose another key"
    np.testing.assert_array_equal(np.asarray(run()[0]), np.asarray(codes))  # seeded
    # each row's own budget: the same codes up to it, then EOS; with every row ended within the
    # first buffer the later ones are never allocated (the conditional's other branch)
    for budget in ([3, 0, 8], [1, 2, 1]):
        capped, capped_len = run(budget=jnp.asarray(budget, jnp.int32))
        want = np.where(np.arange(8) < np.asarray(budget)[:, None], ref, CFG.eos_id)
        np.testing.assert_array_equal(np.asarray(capped), want)
        np.testing.assert_array_equal(np.asarray(capped_len), np.minimum(lengths, budget))
    with pytest.raises(ValueError, match=r"budget of shape \(2,\), expected \(3,\)"):
        run(budget=jnp.asarray([3, 3], jnp.int32))


def test_cache_allowances():
    """The KV cache's room for new codes, per phase: halved from max_new while >= the first."""
    assert cache_allowances(960, 256) == (480, 960)
    assert cache_allowances(1024, 256) == (256, 512, 1024)
    assert cache_allowances(2000, 256) == (500, 1000, 2000)
    assert cache_allowances(511, 256) == (511,)  # the half would be under 256: one buffer
    assert cache_allowances(11, 3) == (3, 6, 11)
    assert cache_allowances(960, 0) == (960,)


def test_nar_generate_matches_per_level_passes():
    """nar_generate's packed layout equals separate greedy passes on each row alone."""
    params = _params()
    model = CodecLM(CFG)
    text, text_len = _text([4, 6], 6)
    rng = np.random.default_rng(3)
    prompt = jnp.asarray(rng.integers(0, 16, (2, 3, 4)), jnp.int32)
    prompt_len = jnp.asarray([2, 4], jnp.int32)
    level1 = jnp.asarray(rng.integers(0, 16, (2, 5)), jnp.int32)
    gen_len = jnp.asarray([5, 3], jnp.int32)
    out = np.asarray(
        nar_generate(
            params,
            text,
            text_len,
            prompt,
            prompt_len,
            level1,
            gen_len,
            jax.random.PRNGKey(0),
            cfg=CFG,
        )
    )
    for b in range(2):
        p, g = int(prompt_len[b]), int(gen_len[b])
        frames = np.zeros((1, 3, p + g), np.int32)
        frames[0, :, :p] = prompt[b, :, :p]
        frames[0, 0, p:] = level1[b, :g]
        for level in (2, 3):
            visible = layout.nar_levels_visible(
                jnp.asarray([p]), jnp.asarray([p + g]), jnp.int32(level), 3, p + g
            )
            logits = model.apply(
                {"params": params},
                text[b : b + 1],
                text_len[b : b + 1],
                jnp.asarray(frames),
                jnp.asarray([p + g]),
                visible,
                jnp.int32(level),
                jnp.zeros(1, jnp.int32),
                method=CodecLM.nar_logits,
            )
            frames[0, level - 1, p:] = np.asarray(jnp.argmax(logits[0, p:], -1))
        np.testing.assert_array_equal(out[b, :, :g], frames[0, :, p:])
        assert (out[b, :, g:] == 0).all()


def _loss(cfg, params, batch):
    """Through every parameter: the AR logits and the level-2 NAR logits."""
    text, text_len, codes, code_len, task = batch
    variables = {"params": params}
    model = CodecLM(cfg)
    audio_in, _, _ = layout.ar_audio(codes[:, 0], code_len, cfg.bos_id, cfg.eos_id, cfg.pad_id)
    ar = model.apply(variables, text, text_len, audio_in, code_len + 1, task, method="ar_logits")
    visible = layout.nar_levels_visible(
        jnp.zeros_like(code_len), code_len, jnp.int32(2), codes.shape[1], codes.shape[2]
    )
    nar = model.apply(
        variables, text, text_len, codes, code_len, visible, jnp.int32(2), task, method="nar_logits"
    )
    return jnp.mean(ar**2) + jnp.mean(nar**2)


def _batch(cfg):
    text, text_len = _text([5, 3], 6)
    codes = jnp.asarray(
        np.random.default_rng(4).integers(0, 16, (2, cfg.num_codebooks, 7)), jnp.int32
    )
    return text, text_len, codes, jnp.asarray([6, 4], jnp.int32), jnp.zeros(2, jnp.int32)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_equals_unrolled_and_remat_equals_none(remat):
    params = _params()
    batch = _batch(CFG)
    base_loss, base_grads = jax.value_and_grad(lambda p: _loss(CFG, p, batch))(params)
    cfg = dataclasses.replace(CFG, scan_layers=False, remat=remat)
    unrolled = dict(params, backbone=unstack_layers(params["backbone"]))
    loss, grads = jax.value_and_grad(lambda p: _loss(cfg, p, batch))(unrolled)
    np.testing.assert_allclose(loss, base_loss, rtol=1e-6)
    np.testing.assert_allclose(
        grads["backbone"]["layer_1"]["block"]["ffn_in"]["kernel"],
        base_grads["backbone"]["layers"]["block"]["ffn_in"]["kernel"][1],
        rtol=1e-5,
        atol=1e-7,
    )
    scanned_remat = dataclasses.replace(CFG, remat=remat)
    loss2, grads2 = jax.value_and_grad(lambda p: _loss(scanned_remat, p, batch))(params)
    np.testing.assert_allclose(loss2, base_loss, rtol=1e-6)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads2, base_grads
    )


def test_valle_preset_eval_shape_and_logical_axes():
    cfg = C.valle(text_vocab_size=128)
    boxed = jax.eval_shape(lambda k: init_lm(cfg, k), jax.random.PRNGKey(0))
    params = nn.meta.unbox(boxed)["params"]
    assert params["backbone"]["layers"]["block"]["attn"]["query"]["kernel"].shape == (
        12,
        1024,
        16,
        64,
    )
    count = sum(x.size for x in jax.tree_util.tree_leaves(params))
    # 12 layers x (4 D^2 attention + 2 D F FFN) = 151M, plus embeddings, heads and AdaLN tables
    assert 155e6 < count < 175e6, count
    conv_cfg = dataclasses.replace(cfg, shared_backbone=False, conv_kernel=31)
    conv_boxed = jax.eval_shape(lambda k: init_lm(conv_cfg, k), jax.random.PRNGKey(0))
    specs = nn.get_partition_spec(boxed)["params"]
    conv_specs = nn.get_partition_spec(conv_boxed)["params"]
    for spec in jax.tree_util.tree_leaves(
        (specs, conv_specs), is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec)
    ):
        assert (
            isinstance(spec, jax.sharding.PartitionSpec) and len(spec) > 0
        )  # every parameter named
    assert specs["backbone"]["layers"]["block"]["ffn_in"]["kernel"] == jax.sharding.PartitionSpec(
        "layers", "embed", "mlp"
    )


def test_separate_stacks_live_in_one_tree():
    cfg = dataclasses.replace(CFG, shared_backbone=False, conv_kernel=3)
    params = _params(cfg)
    assert {"ar_backbone", "nar_backbone", "audio_embed", "ar_head", "nar_heads"} <= set(params)
    assert "conv" in params["nar_backbone"]["layers"]["block"]
    assert "conv" not in params["ar_backbone"]["layers"]["block"]
    shared = _params(dataclasses.replace(CFG, conv_kernel=3))  # shared: conv for NAR/masked only
    assert "conv" in shared["backbone"]["layers"]["block"]


def test_padding_never_changes_real_outputs():
    """With the Conformer conv (separate stacks): the NAR logits of real frames do not depend on
    what the padded frames hold or on how wide the text bucket is."""
    cfg = dataclasses.replace(CFG, shared_backbone=False, conv_kernel=5)
    params = _params(cfg)
    model = CodecLM(cfg)
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 16, (2, 3, 9)).astype(np.int32)
    code_len = jnp.asarray([6, 9], jnp.int32)
    outs = []
    for text_width, pad_value in ((6, 0), (13, 11)):
        text, text_len = _text([5, 3], text_width)
        padded = codes.copy()
        padded[0, :, 6:] = pad_value
        visible = layout.nar_levels_visible(
            jnp.asarray([2, 3]), code_len, jnp.int32(3), 3, codes.shape[2]
        )
        outs.append(
            model.apply(
                {"params": params},
                text,
                text_len,
                jnp.asarray(padded),
                code_len,
                visible,
                jnp.int32(3),
                jnp.zeros(2, jnp.int32),
                method=CodecLM.nar_logits,
            )
        )
    np.testing.assert_allclose(outs[0][0, :6], outs[1][0, :6], atol=1e-5)
    np.testing.assert_allclose(outs[0][1], outs[1][1], atol=1e-5)


@pytest.mark.parametrize(
    "shared, conv, semantic", [(True, 0, 0), (False, 0, 0), (True, 3, 0), (True, 0, 5)]
)
def test_init_creates_exactly_what_every_pass_reads(shared, conv, semantic):
    """`init_lm` touches each part once, yet the AR, NAR and masked passes all find every
    parameter they read (apply fails on a missing one), and no parameter goes unused: each
    leaf gets a non-zero gradient from the sum of the three passes."""
    cfg = dataclasses.replace(
        CFG, shared_backbone=shared, conv_kernel=conv, semantic_vocab_size=semantic
    )
    params = _params(cfg)
    text, text_len, codes, code_len, task = _batch(cfg)

    def loss(p):
        model, v = CodecLM(cfg), {"params": p}
        semantic_ids = jnp.ones(codes.shape[::2], jnp.int32) if semantic else None
        masked = model.apply(
            v,
            text,
            text_len,
            codes,
            code_len,
            jnp.int32(2),
            task,
            semantic_ids,
            method="masked_logits",
        )
        return _loss(cfg, p, (text, text_len, codes, code_len, task)) + jnp.mean(masked**2)

    grads = jax.grad(loss)(params)
    unused = [
        jax.tree_util.keystr(path)
        for path, g in jax.tree_util.tree_leaves_with_path(grads)
        if not np.any(np.asarray(g))
    ]
    assert not unused, f"parameters no pass reads: {unused}"


def test_ar_head_padding_changes_no_output():
    """vocab_multiple=8 pads the AR head's 17 columns to 24: with the same 17 real columns, the
    training logits are the unpadded ones plus -inf columns (so the loss and accuracies are
    equal), and decoding (ar_project, sampled with top-k and top-p) returns the same codes."""
    from nclm.train.lm_step import ar_terms

    padded_cfg = dataclasses.replace(CFG, vocab_multiple=8)
    assert padded_cfg.ar_head_size == 24 and CFG.ar_head_size == 17
    init = jax.jit(lambda key: nn.meta.unbox(init_lm(padded_cfg, key))["params"])
    padded = init(jax.random.PRNGKey(0))
    assert padded["ar_head"].shape == (CFG.width, 24)
    plain = dict(padded, ar_head=padded["ar_head"][:, :17])
    text, text_len, codes, code_len, task = _batch(CFG)
    batch = {"text": text, "text_len": text_len, "codes": codes, "code_len": code_len}
    audio_in, _, _ = layout.ar_audio(codes[:, 0], code_len, CFG.bos_id, CFG.eos_id, CFG.pad_id)

    @partial(jax.jit, static_argnums=0)
    def logits_and_metrics(cfg, params):
        model = CodecLM(cfg)
        args = (text, text_len, audio_in, code_len + 1, task)
        logits = model.apply({"params": params}, *args, method="ar_logits")
        return logits, ar_terms(model, params, batch)

    wide, m_wide = logits_and_metrics(padded_cfg, padded)
    ref, m_ref = logits_and_metrics(CFG, plain)
    assert wide.shape[-1] == 24 and np.isneginf(np.asarray(wide[..., 17:])).all()
    np.testing.assert_allclose(np.asarray(wide[..., :17]), np.asarray(ref), rtol=1e-6, atol=1e-6)
    for k in m_ref:
        np.testing.assert_allclose(m_wide[k], m_ref[k], rtol=1e-6, err_msg=k)
    prompt = jnp.asarray(np.random.default_rng(2).integers(0, 16, (2, 3)), jnp.int32)
    sampling = SamplingConfig(temperature=1.0, top_k=5, top_p=0.9)
    out = [
        ar_generate(
            p,
            text,
            text_len,
            prompt,
            jnp.asarray([3, 1]),
            jax.random.PRNGKey(3),
            cfg=c,
            max_new=6,
            sampling=sampling,
        )[0]
        for p, c in ((padded, padded_cfg), (plain, CFG))
    ]
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(out[1]))
