"""Quantizers against NumPy references of the equations in their docstrings.

EMA RVQ (rvq_ema.py): residual nearest-neighbour loop, EMA update with Laplace smoothing, dead-code
restarts, straight-through gradient, commitment loss, batch statistics, variable bandwidth.
Factorized RVQ (rvq_factorized.py): weight-normed projections, cosine lookup, losses, DAC's
per-item quantizer dropout. Plus k-means.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nclm.codec.config import QuantizerConfig
from nclm.codec.quantize import kmeans
from nclm.codec.rvq_ema import EMAResidualVQ, batch_statistics, ema_update
from nclm.codec.rvq_factorized import FactorizedResidualVQ

B, T, Q, V = 3, 10, 4, 16


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _rngs(seed: int) -> dict:
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"dropout": k1, "codebooks": k2}


class _Fns:
    """Jitted entry points of one quantizer module, compiled once per shape and reused."""

    def __init__(self, model):
        self.encode = jax.jit(functools.partial(model.apply, method="encode"), static_argnums=2)
        self.decode = jax.jit(functools.partial(model.apply, method="decode"))
        self.train = jax.jit(
            lambda v, z, rngs, mask=None: model.apply(v, z, train=True, mask=mask, rngs=rngs)
        )
        self.eval = jax.jit(model.apply)


# ---------------------------------------------------------------------------------------------
# EMA residual VQ

D_EMA = 8


@functools.cache
def _ema_setup(dropout: float = 0.0):
    cfg = QuantizerConfig("ema", Q, V, D_EMA, dropout=dropout)
    model = EMAResidualVQ(cfg)
    z = jnp.asarray(_rng(0).standard_normal((B, T, D_EMA)), jnp.float32)
    variables = jax.jit(model.init)({"params": jax.random.key(0)}, z)
    assert set(variables) == {"codebooks"}  # nothing is trained by gradients
    shapes = {k: v.shape for k, v in variables["codebooks"].items()}
    assert shapes == {"embed": (Q, V, D_EMA), "embed_sum": (Q, V, D_EMA), "cluster_size": (Q, V)}
    # Codebooks at the scale of each level's residual, so every level's choice matters.
    scale = 0.6 ** np.arange(Q)[:, None, None]
    embed = (_rng(1).standard_normal((Q, V, D_EMA)) * scale).astype(np.float32)
    books = {"embed": embed, "embed_sum": embed, "cluster_size": np.ones((Q, V), np.float32)}
    return cfg, _Fns(model), {"codebooks": books}, z


def _ema_reference(z: np.ndarray, embed: np.ndarray):
    """codes[B, Q, T], chosen rows[Q, B, T, D], input residuals[Q, B, T, D] (float64)."""
    r = z.astype(np.float64)
    codes, rows, residuals = [], [], []
    for e in embed.astype(np.float64):
        idx = np.argmin(((r[..., None, :] - e) ** 2).sum(-1), axis=-1)
        residuals.append(r)
        rows.append(e[idx])
        codes.append(idx)
        r = r - e[idx]
    return np.stack(codes, axis=1), np.stack(rows), np.stack(residuals)


def test_ema_encode_decode_match_reference():
    _, fns, variables, z = _ema_setup()
    embed = variables["codebooks"]["embed"]
    ref_codes, rows, _ = _ema_reference(np.asarray(z), embed)
    codes = np.asarray(fns.encode(variables, z, None))
    assert codes.dtype == np.int32 and codes.shape == (B, Q, T)
    np.testing.assert_array_equal(codes, ref_codes)
    assert len(np.unique(codes[:, -1])) > 1

    out = fns.decode(variables, jnp.asarray(codes))
    np.testing.assert_allclose(np.asarray(out), rows.sum(0), atol=1e-5, rtol=0)
    for n in range(1, Q + 1):
        np.testing.assert_array_equal(np.asarray(fns.encode(variables, z, n)), ref_codes[:, :n])
        out = fns.decode(variables, jnp.asarray(codes[:, :n]))
        np.testing.assert_allclose(np.asarray(out), rows[:n].sum(0), atol=1e-5, rtol=0)


def test_ema_train_forward():
    _, fns, variables, z = _ema_setup()
    ref_codes, rows, residuals = _ema_reference(np.asarray(z), variables["codebooks"]["embed"])

    def forward(z, mask=None):
        return fns.train(variables, z, _rngs(0), mask)

    out = forward(z)
    np.testing.assert_array_equal(np.asarray(out.codes), ref_codes)
    np.testing.assert_allclose(np.asarray(out.quantized), rows.sum(0), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(np.asarray(out.levels_used), [Q] * B)
    # Commitment: sum over levels of the mean squared distance between residual and its code.
    commit = sum(np.mean((residuals[q] - rows[q]) ** 2) for q in range(Q))
    np.testing.assert_allclose(float(out.commitment_loss), commit, rtol=1e-5)
    assert float(out.codebook_loss) == 0.0

    # Straight-through: the quantized output passes gradients to z unchanged.
    grad = jax.grad(lambda z: jnp.sum(forward(z).quantized))(z)
    np.testing.assert_array_equal(np.asarray(grad), np.ones(z.shape, np.float32))

    stats = out.stats
    assert stats["counts"].shape == (Q, V) and stats["sums"].shape == (Q, V, D_EMA)
    np.testing.assert_array_equal(np.asarray(stats["counts"]).sum(-1), [B * T] * Q)
    for q in range(Q):
        onehot = np.eye(V)[ref_codes[:, q]]  # [B, T, V]
        np.testing.assert_allclose(np.asarray(stats["counts"][q]), onehot.sum((0, 1)))
        sums = np.einsum("btv,btd->vd", onehot, residuals[q])
        np.testing.assert_allclose(np.asarray(stats["sums"][q]), sums, atol=1e-5, rtol=0)

    # With a frame mask, padding frames count for nothing.
    mask = np.ones((B, T), bool)
    mask[0, 6:] = False
    mask[2, 3:] = False
    out = forward(z, jnp.asarray(mask))
    counts = np.asarray(out.stats["counts"])
    np.testing.assert_array_equal(counts.sum(-1), [mask.sum()] * Q)
    for q in range(Q):
        np.testing.assert_array_equal(counts[q], np.eye(V)[ref_codes[:, q][mask]].sum(0))
    commit = sum(np.mean(((residuals[q] - rows[q]) ** 2)[mask]) for q in range(Q))
    np.testing.assert_allclose(float(out.commitment_loss), commit, rtol=1e-5)


def test_ema_level_dropout():
    """dropout=1: every training batch uses a random number of levels n in 1..Q; the output is the
    decode of the first n codes and the statistics of levels >= n are empty."""
    cfg, fns, variables, z = _ema_setup(dropout=1.0)
    forward = functools.partial(fns.train, variables)
    books = {k: jnp.asarray(v) for k, v in variables["codebooks"].items()}
    seen = set()
    for seed in range(12):
        out = forward(z, _rngs(seed))
        used = np.asarray(out.levels_used)
        assert (used == used[0]).all() and 1 <= used[0] <= Q
        n = int(used[0])
        seen.add(n)
        ref = fns.decode(variables, out.codes[:, :n])
        np.testing.assert_allclose(np.asarray(out.quantized), np.asarray(ref), atol=1e-5, rtol=0)
        counts = np.asarray(out.stats["counts"]).sum(-1)
        np.testing.assert_array_equal(counts, [B * T] * n + [0] * (Q - n))
        # The EMA step moves the levels used and leaves the others as they are.
        new, metrics = ema_update(books, out.stats, cfg)
        for key in books:
            np.testing.assert_array_equal(np.asarray(new[key][n:]), np.asarray(books[key][n:]))
            assert not np.array_equal(np.asarray(new[key][:n]), np.asarray(books[key][:n]))
        assert np.asarray(metrics["dead_code_restarts"][n:]).sum() == 0
    assert len(seen) > 1 and min(seen) < Q


def _ema_update_reference(books: dict, stats: dict, cfg: QuantizerConfig):
    g, eps, thr = cfg.decay, cfg.epsilon, cfg.dead_code_threshold
    n = g * books["cluster_size"] + (1 - g) * stats["counts"]
    m = g * books["embed_sum"] + (1 - g) * stats["sums"]
    total = n.sum(-1, keepdims=True)
    smoothed = (n + eps) / (total + cfg.codebook_size * eps) * total
    embed = m / smoothed[..., None]
    dead = n < thr
    embed[dead] = stats["samples"][dead]
    m[dead] = thr * stats["samples"][dead]
    n[dead] = thr
    return {"embed": embed, "embed_sum": m, "cluster_size": n}, dead.sum(-1)


def test_ema_update_equations_and_restarts():
    cfg = QuantizerConfig("ema", 2, 4, 3, decay=0.9, epsilon=1e-3, dead_code_threshold=2.0)
    rng = _rng(5)
    books = {
        "cluster_size": np.array([[5.0, 3.0, 0.5, 10.0], [2.5, 2.1, 7.0, 1.0]]),
        "embed_sum": rng.standard_normal((2, 4, 3)),
        "embed": rng.standard_normal((2, 4, 3)),
    }
    stats = {
        "counts": np.array([[2.0, 0.0, 0.0, 6.0], [0.0, 0.0, 8.0, 0.0]]),
        "sums": rng.standard_normal((2, 4, 3)),
        "samples": rng.standard_normal((2, 4, 3)),
    }
    ref, ref_dead = _ema_update_reference(
        {k: v.copy() for k, v in books.items()}, {k: v.copy() for k, v in stats.items()}, cfg
    )
    # N after the average: level 0 [4.7, 2.7, 0.45, 9.6] -> code 2 dead; level 1
    # [2.25, 1.89, 7.1, 0.9] -> codes 1 and 3 dead.
    np.testing.assert_array_equal(ref_dead, [1, 2])
    as_jax = lambda d: {k: jnp.asarray(v, jnp.float32) for k, v in d.items()}
    new, metrics = ema_update(as_jax(books), as_jax(stats), cfg)
    for key in ("embed", "embed_sum", "cluster_size"):
        np.testing.assert_allclose(np.asarray(new[key]), ref[key], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(metrics["dead_code_restarts"]), [1, 2])
    # Restarted codes sit on their sample; live codes are untouched by the restart.
    np.testing.assert_allclose(np.asarray(new["embed"][0, 2]), stats["samples"][0, 2], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new["embed"][1, 3]), stats["samples"][1, 3], rtol=1e-6)
    live = np.asarray(new["cluster_size"]) > cfg.dead_code_threshold
    assert not np.isclose(np.asarray(new["embed"])[live], stats["samples"][live]).all(-1).any()


def test_ema_update_with_empty_level_keeps_level():
    """A level that the batch did not use (variable bandwidth) is left as it is: no EMA decay and
    no restarts, as in EnCodec where only the levels used are updated."""
    cfg = QuantizerConfig("ema", 2, 4, 3, dead_code_threshold=2.0)
    rng = _rng(6)
    books = {
        "cluster_size": jnp.array([[5.0, 2.001, 3.0, 4.0], [5.0, 2.001, 3.0, 4.0]]),
        "embed_sum": jnp.asarray(rng.standard_normal((2, 4, 3)), jnp.float32),
        "embed": jnp.asarray(rng.standard_normal((2, 4, 3)), jnp.float32),
    }
    stats = {
        "counts": jnp.array([[3.0, 0.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0]]),
        "sums": jnp.asarray(rng.standard_normal((2, 4, 3)), jnp.float32),
        "samples": jnp.asarray(rng.standard_normal((2, 4, 3)), jnp.float32),
    }
    new, metrics = ema_update(books, stats, cfg)
    for key in ("embed", "embed_sum", "cluster_size"):
        np.testing.assert_array_equal(np.asarray(new[key][1]), np.asarray(books[key][1]))
    assert metrics["dead_code_restarts"].tolist() == [1, 0]  # level 0: 0.99 * 2.001 < 2


def test_ema_restart_candidates_are_real_frames():
    """Dead codes restart at frames of the batch, never at padding frames."""
    num_q, frames, dim = 2, 40, 3
    residuals = jnp.arange(num_q * frames * dim, dtype=jnp.float32).reshape(num_q, 1, frames, dim)
    codes = jnp.zeros((1, num_q, frames), jnp.int32)
    mask = np.zeros(frames, np.float32)
    mask[[3, 17, 30]] = 1
    weight = jnp.broadcast_to(jnp.asarray(mask), (num_q, 1, frames))
    stats = batch_statistics(residuals, codes, weight, 64, jax.random.key(0))
    picked = np.asarray(stats["samples"])[..., 0]  # [Q, V] first coordinate identifies the frame
    frame_of = (picked - np.arange(num_q)[:, None] * frames * dim) / dim
    assert set(np.unique(frame_of).tolist()) <= {3.0, 17.0, 30.0}
    assert len(np.unique(frame_of)) == 3  # and they are spread over the real frames


def test_kmeans_recovers_blobs():
    centres = np.array([[5, 5], [-5, 5], [5, -5], [-5, -5]], np.float32)
    x = (centres[:, None] + 0.2 * _rng(0).standard_normal((4, 50, 2))).reshape(-1, 2)
    x = jnp.asarray(x, jnp.float32)
    keys = jax.random.split(jax.random.key(0), 8)
    cents, counts = jax.jit(jax.vmap(lambda k: kmeans(x, 4, 20, k)))(keys)
    cents, counts = np.asarray(cents), np.asarray(counts)
    np.testing.assert_array_equal(counts.sum(-1), [200] * 8)
    # Lloyd's from random rows can merge two blobs (a local minimum, as in EnCodec's k-means), so
    # keep the run with the lowest inertia, as k-means restarts do.
    xs = np.asarray(x)
    inertia = [((xs[:, None] - c) ** 2).sum(-1).min(-1).sum() for c in cents]
    best = cents[int(np.argmin(inertia))]
    dist = np.abs(best[:, None] - centres[None]).sum(-1)
    assert sorted(dist.argmin(0).tolist()) == [0, 1, 2, 3]  # one centroid per blob
    assert dist.min(0).max() < 0.2
    np.testing.assert_array_equal(counts[int(np.argmin(inertia))], [50] * 4)
    # Every run ends at a fixed point: each non-empty cluster's centroid is its points' mean.
    for c in cents:
        assign = ((xs[:, None] - c) ** 2).sum(-1).argmin(-1)
        for k in np.unique(assign):
            np.testing.assert_allclose(c[k], xs[assign == k].mean(0), atol=1e-4)


def test_kmeans_fewer_points_than_clusters():
    x = jnp.asarray(_rng(1).standard_normal((3, 2)), jnp.float32)
    cents, counts = kmeans(x, 8, 5, jax.random.key(0))
    assert cents.shape == (8, 2) and float(counts.sum()) == 3


# ---------------------------------------------------------------------------------------------
# Factorized (DAC) residual VQ

D_FAC, d_FAC = 12, 4


@functools.cache
def _factorized_setup(dropout: float = 0.0, batch: int = B):
    cfg = QuantizerConfig("factorized", Q, V, d_FAC, dropout=dropout)
    model = FactorizedResidualVQ(cfg, D_FAC)
    z = jnp.asarray(_rng(2).standard_normal((batch, T, D_FAC)), jnp.float32)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), z))["params"]
    rng = _rng(3)
    params = {
        k: (rng.standard_normal(v.shape) * (0.3 if k.endswith("_b") else 1.0)).astype(np.float32)
        for k, v in params.items()
    }
    params["in_g"] = np.abs(params["in_g"]) + 0.5
    params["out_g"] = np.abs(params["out_g"]) * 0.3 + 0.1
    return cfg, _Fns(model), {"params": params}, z


def _factorized_reference(z: np.ndarray, p: dict):
    """Per docstring: z_e = r W_in + b_in; cosine argmax; z_q = codebook row; out = z_q W_out +
    b_out; r <- r - out. Returns codes[B, Q, T], z_e[Q, ...], z_q[Q, ...], out[Q, ...]."""
    p = {k: v.astype(np.float64) for k, v in p.items()}
    w_in = p["in_g"][:, None, :] * p["in_v"] / np.linalg.norm(p["in_v"], axis=1, keepdims=True)
    w_out = p["out_g"][:, None, :] * p["out_v"] / np.linalg.norm(p["out_v"], axis=1, keepdims=True)
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    r = z.astype(np.float64)
    codes, z_es, z_qs, outs = [], [], [], []
    for q in range(p["codebook"].shape[0]):
        z_e = r @ w_in[q] + p["in_b"][q]
        idx = np.argmax(unit(z_e) @ unit(p["codebook"][q]).T, axis=-1)
        z_q = p["codebook"][q][idx]
        out = z_q @ w_out[q] + p["out_b"][q]
        r = r - out
        codes.append(idx)
        z_es.append(z_e)
        z_qs.append(z_q)
        outs.append(out)
    return np.stack(codes, 1), np.stack(z_es), np.stack(z_qs), np.stack(outs)


def test_factorized_encode_decode_losses_match_reference():
    _, fns, variables, z = _factorized_setup()
    ref_codes, z_e, z_q, outs = _factorized_reference(np.asarray(z), variables["params"])
    codes = np.asarray(fns.encode(variables, z, None))
    assert codes.shape == (B, Q, T)
    np.testing.assert_array_equal(codes, ref_codes)
    assert len(np.unique(codes[:, -1])) > 1

    for n in range(1, Q + 1):
        out = fns.decode(variables, jnp.asarray(codes[:, :n]))
        np.testing.assert_allclose(np.asarray(out), outs[:n].sum(0), atol=1e-4, rtol=0)

    res = fns.eval(variables, z)  # eval forward: all levels, no dropout
    np.testing.assert_array_equal(np.asarray(res.codes), ref_codes)
    np.testing.assert_allclose(np.asarray(res.quantized), outs.sum(0), atol=1e-4, rtol=0)
    loss = sum(np.mean((z_e[q] - z_q[q]) ** 2) for q in range(Q))
    np.testing.assert_allclose(float(res.commitment_loss), loss, rtol=1e-5)
    np.testing.assert_allclose(float(res.codebook_loss), loss, rtol=1e-5)
    assert res.stats is None


def test_factorized_loss_gradients_are_split():
    """Codebook loss moves only the codebook; commitment loss never reaches the codebook."""
    _, fns, variables, z = _factorized_setup()

    def loss(params, which):
        return getattr(fns.train({"params": params}, z, None), which)

    params = jax.tree_util.tree_map(jnp.asarray, variables["params"])
    g_book = jax.grad(loss)(params, "codebook_loss")
    g_commit = jax.grad(loss)(params, "commitment_loss")
    for k, g in g_book.items():
        assert (np.abs(np.asarray(g)).max() > 0) == (k == "codebook"), k
    assert np.abs(np.asarray(g_commit["codebook"])).max() == 0
    assert np.abs(np.asarray(g_commit["in_v"])).max() > 0


def test_factorized_quantizer_dropout():
    batch = 6
    _, fns, variables, z = _factorized_setup(dropout=0.5, batch=batch)
    forward = functools.partial(fns.train, variables)
    ref_codes, z_e, z_q, outs = _factorized_reference(np.asarray(z), variables["params"])
    seen = set()
    for seed in range(4):
        res = forward(z, _rngs(seed))
        used = np.asarray(res.levels_used)
        n_drop = round(batch * 0.5)
        assert ((1 <= used[:n_drop]) & (used[:n_drop] <= Q)).all()
        np.testing.assert_array_equal(used[n_drop:], Q)
        seen.update(used[:n_drop].tolist())
        np.testing.assert_array_equal(np.asarray(res.codes), ref_codes)  # codes: all levels
        for b in range(batch):
            n = int(used[b])
            ref = fns.decode(variables, res.codes[b : b + 1, :n])
            np.testing.assert_allclose(
                np.asarray(res.quantized[b : b + 1]), np.asarray(ref), atol=1e-4, rtol=0
            )
        # Losses: levels >= levels_used contribute nothing; normalised by all frames.
        on = np.arange(Q)[:, None] < used[None, :]  # [Q, B]
        err = ((z_e - z_q) ** 2).mean(-1)  # [Q, B, T]
        loss = (err * on[:, :, None]).sum() / (batch * T)
        np.testing.assert_allclose(float(res.commitment_loss), loss, rtol=1e-5)
        np.testing.assert_allclose(float(res.codebook_loss), loss, rtol=1e-5)
    assert min(seen) < Q


@pytest.mark.parametrize("kind", ["ema", "factorized"])
def test_eval_forward_ignores_dropout(kind):
    if kind == "ema":
        _, fns, variables, z = _ema_setup(dropout=1.0)
    else:
        _, fns, variables, z = _factorized_setup(dropout=1.0)
    res = fns.eval(variables, z)
    np.testing.assert_array_equal(np.asarray(res.levels_used), [Q] * B)
