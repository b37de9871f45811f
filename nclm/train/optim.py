"""Optimizers from config, and the guard that keeps non-finite updates out of the state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def make_optimizer(
    lr: float,
    b1: float = 0.8,
    b2: float = 0.9,
    weight_decay: float = 0.0,
    decay_rate: float = 1.0,
    clip_norm: float = 0.0,
) -> optax.GradientTransformation:
    """AdamW with a per-step exponential learning-rate decay (lr * decay_rate**step, as DAC) and
    optional global-norm clipping applied first."""
    schedule = optax.exponential_decay(lr, transition_steps=1, decay_rate=decay_rate)
    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm > 0 else []
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay))
    return optax.chain(*parts)


DECAYED = ("kernel", "ar_head", "nar_heads")


def make_lm_optimizer(
    lr: float,
    warmup_steps: int,
    total_steps: int,
    b1: float = 0.9,
    b2: float = 0.98,
    weight_decay: float = 0.01,
    clip_norm: float = 1.0,
) -> optax.GradientTransformation:
    """AdamW with linear warm-up to `lr` then linear decay to 0 at `total_steps` (VALL-E),
    global-norm clipping first, and weight decay on the projection matrices only (leaves named in
    DECAYED: not on embeddings, biases or the norms' scale/shift tables)."""
    warmup = max(1, min(warmup_steps, total_steps))
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, lr, warmup),
            optax.linear_schedule(lr, 0.0, max(1, total_steps - warmup)),
        ],
        [warmup],
    )

    def decay_mask(params):
        def named(path, _):  # the last dict key (boxed leaves end in a `.value` attribute)
            keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
            return bool(keys) and keys[-1] in DECAYED

        return jax.tree_util.tree_map_with_path(named, params)

    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm > 0 else []
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask))
    return optax.chain(*parts)


def global_norm(tree) -> jax.Array:
    """sqrt(sum of squares) over every leaf (optax.tree.norm where this optax has it; the older
    optax.global_norm is deprecated in new releases and the only one in old ones)."""
    tree_ns = getattr(optax, "tree", None)
    if tree_ns is not None and hasattr(tree_ns, "norm"):
        return tree_ns.norm(tree)
    return optax.global_norm(tree)


def all_finite(*trees) -> jax.Array:
    """True when every leaf of every tree is finite, as one scalar: the sum of the trees' global
    norms is finite exactly when no leaf holds NaN or Inf (or a norm overflows float32, which is
    as bad a step). One reduction per leaf feeding one scalar compiles far faster than a stack of
    per-leaf `isfinite` maps."""
    total = sum(global_norm(t) for t in trees)
    return jnp.isfinite(total)


def keep_if_finite(finite: jax.Array, new, old):
    """`new` when `finite`, else `old` (a step with NaN/Inf changes nothing). One `lax.cond` on
    the whole state rather than a `where` per leaf: XLA compiles the step several times faster."""
    return jax.lax.cond(finite, lambda: new, lambda: old)


def _is_schedule(s) -> bool:
    return isinstance(s, optax.ScaleByScheduleState)


def skip_update(opt_state):
    """The optimizer state after a skipped (non-finite) step: moments and Adam's bias-correction
    count as they were, the learning-rate schedule's count advanced by one. `state.step` counts
    batches consumed (the data position, checkpoints and `total_steps` follow it), so the schedule
    must follow it too; Adam's count stays the number of updates its moments have seen."""
    advance = lambda s: s._replace(count=optax.safe_increment(s.count)) if _is_schedule(s) else s
    return jax.tree_util.tree_map(advance, opt_state, is_leaf=_is_schedule)
