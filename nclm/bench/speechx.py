"""SpeechX timings: enhance 10 s of speech with AR + NAR against masked decoding (the LM of
configs/lm/speechx.py, random weights, decoders only, compiled once, median of 3), the
simulation's throughput, the codec encode it needs (configs/codec/quickstart.py's codec), and
that cost against one LM training step: the numbers behind precomputing the examples
(nclm/tasks/simulate_shards.py). Run: `python -m nclm.bench.speechx` (not yet an `nclm bench`
subcommand)."""

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nclm.codec.config import CodecConfig
from nclm.codec.interface import NeuralCodec
from nclm.codec.model import init_codec
from nclm.config import load_config
from nclm.decode.ar import ar_generate
from nclm.decode.masked import MaskedSchedule, masked_generate
from nclm.decode.nar import nar_generate
from nclm.decode.sampling import SamplingConfig
from nclm.lm import speechx as sx
from nclm.lm.experiment import lm_config_from
from nclm.lm.model import init_lm
from nclm.sharding import make_mesh
from nclm.tasks.simulate import SimConfig, Utterance, simulate
from nclm.tasks.simulate_shards import encode_examples
from nclm.train.lm_train import build_lm_trainer

cfg = load_config("configs/lm/speechx.py")
lm = lm_config_from(cfg, 64)
params = nn.meta.unbox(init_lm(lm, jax.random.PRNGKey(0)))["params"]
T = 500  # 10 s at 50 Hz
mix = np.random.default_rng(0).integers(0, 256, (8, T)).astype(np.int32)
ex = sx.layout_example("ns", None, mix[:, :1], 8, mixture=mix)
a = sx.stack_prefixes([ex], 512)
text, tl = jnp.asarray(a["text"]), jnp.asarray(a["text_len"])
prefix = sx.Prefix(jnp.asarray(a["prefix_kind"]), jnp.asarray(a["prefix_codes"]))
prompt, start = jnp.zeros((1, 8, 64), jnp.int32), jnp.zeros((1,), jnp.int32)
key = jax.random.PRNGKey(1)


def arnar():
    l1, n = ar_generate(
        params,
        text,
        tl,
        prompt[:, 0],
        start,
        key,
        prefix=prefix,
        cfg=lm,
        max_new=512,
        sampling=SamplingConfig(temperature=0.0),
        min_new=T,
    )
    n = jnp.minimum(n, T)
    return nar_generate(params, text, tl, prompt, start, l1, n, key, prefix=prefix, cfg=lm)


def masked():
    return masked_generate(
        params,
        text,
        tl,
        prompt,
        start,
        jnp.asarray([T]),
        key,
        prefix=prefix,
        cfg=lm,
        num_frames=512,
        schedule=MaskedSchedule(guidance="none"),
    )[0]


for name, f in (("ar+nar", arnar), ("masked", masked)):
    jax.block_until_ready(f())
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(f())
        ts.append(time.perf_counter() - t0)
    print(
        f"enhance 10 s, {name}: median {sorted(ts)[1]:.2f} s",
        f"(runs {', '.join(f'{t:.2f}' for t in ts)})",
    )

# simulation and encoding

ccfg = CodecConfig.from_dict(load_config("configs/codec/quickstart.py").codec.to_dict())
codec = NeuralCodec(ccfg, init_codec(ccfg, jax.random.PRNGKey(0)))
rng = np.random.default_rng(0)


def utt(i):  # 2-4 s of harmonic "speech"
    n = int(16000 * (2 + 2 * rng.random()))
    t = np.arange(n) / 16000
    return (0.2 * sum(np.sin(2 * np.pi * (100 + 10 * i) * k * t) / k for k in range(1, 6))).astype(
        np.float32
    )


corpus = [Utterance(utt(i), np.arange(20, dtype=np.int32) + 3, f"s{i % 4}") for i in range(16)]
N = 64
t0 = time.perf_counter()
sims = [simulate(corpus, i, 0, SimConfig(), 16000, ccfg.hop_length) for i in range(N)]
t_sim = (time.perf_counter() - t0) / N
audio_s = sum(len(s.target) + sum(len(p) for p in s.parts.values()) for s in sims) / 16000 / N
encode_examples(codec, sims[:16], 16)  # compile the buckets
t0 = time.perf_counter()
encode_examples(codec, sims, 16)
t_enc = (time.perf_counter() - t0) / N
print(
    f"simulate: {1e3 * t_sim:.1f} ms/example ({audio_s:.1f} s of audio per example: parts + target)"
)
print(
    f"encode:   {1e3 * t_enc:.1f} ms/example; simulate+encode {1 / (t_sim + t_enc):.1f} examples/s"
)

# the LM step these examples feed (configs/lm/speechx.py, a batch of its smaller bucket)

trainer = build_lm_trainer(cfg, lm, make_mesh({"data": 1}, jax.devices()[:1]), multitask=True)
rows = max(1, cfg.data.max_tokens // (96 + 160))
exs = [sx.layout_example("ns", None, mix[:, :150], 8, mixture=mix[:, :80])] * rows
b = sx.stack_prefixes(exs, 96)
b.update(
    codes=np.zeros((rows, 8, 160), np.int32) + 0,
    code_len=np.full(rows, 150, np.int32),
    task=np.ones(rows, np.int32),
    target_start=np.zeros(rows, np.int32),
)
b["codes"][:, :, :150] = mix[:, :150]
state = trainer.init(jax.random.PRNGKey(0))
state, m = trainer.step(state, b, key)
jax.block_until_ready(m)
ts = []
for _ in range(3):
    t0 = time.perf_counter()
    state, m = trainer.step(state, b, key)
    jax.block_until_ready(m)
    ts.append(time.perf_counter() - t0)
t_step = sorted(ts)[1]
print(
    f"LM step (speechx.py, {rows} rows x (96 prefix + 160 frames)): {1e3 * t_step:.0f} ms; "
    f"on-the-fly simulate+encode of its {rows} examples: {1e3 * rows * (t_sim + t_enc):.0f} ms "
    f"= {rows * (t_sim + t_enc) / t_step:.2f} x the step"
)
