"""Starting a run from trained weights (`--config.init_from`): a freshly initialised tree, whose
leaves carry the partitioning metadata the shardings are read from, holding a checkpoint's
values."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def with_values(boxed: Any, values: Any) -> Any:
    """`boxed` (init's variables, partitioning metadata on the leaves) holding `values` instead,
    each cast to its leaf's dtype; the two trees must have the same structure."""
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)

    def put(fresh, value):
        target = fresh.unbox() if is_box(fresh) else fresh
        value = jnp.asarray(value, target.dtype)
        return fresh.replace_boxed(value) if is_box(fresh) else value

    return jax.tree.map(put, boxed, values, is_leaf=is_box)
