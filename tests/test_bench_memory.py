"""`nclm bench memory` on the 8 fake CPU devices: the per-device parameter and optimizer bytes it
reports from the shardings equal the bytes jax really places on one device when the same
trainer initialises, the compiler's argument size agrees with them, and the table says which
figures carry over (CPU temporaries do not)."""

import argparse
import json

import jax
import numpy as np

from nclm.bench import memory
from nclm.config import load_config
from nclm.lm.experiment import lm_config_from
from nclm.sharding import make_mesh
from nclm.train.lm_train import build_lm_trainer

OVERRIDES = [
    "--config.lm.num_layers=1",
    "--config.lm.width=64",
    "--config.lm.ffn=128",
    "--config.lm.vocab_multiple=8",
    "--config.data.max_tokens=384",
    "--config.objective.nar_weight=0",  # the AR objective alone: a small program to compile
    "--config.objective.masked_weight=0",
]


def _device0_bytes(tree) -> int:
    """Bytes of the shards jax placed on device 0: the measurement, not the formula."""
    device = jax.devices()[0]
    return sum(
        s.data.nbytes
        for leaf in jax.tree_util.tree_leaves(tree)
        for s in leaf.addressable_shards
        if s.device == device
    )


def test_memory_report_matches_the_placed_state(tmp_path, capsys):
    args = argparse.Namespace(
        config="configs/lm/quickstart.py",
        mesh="data=2,fsdp=2,tensor=2",
        topology=None,
        devices=8,
        bucket="16,32",
        text_vocab=40,
        json=str(tmp_path / "memory.json"),
    )
    result = memory.run(args, OVERRIDES)
    sizes = result["bytes_per_device"]
    assert result["batch"] == "8 rows x (text 16 + frames 32)"

    cfg = load_config("configs/lm/quickstart.py", OVERRIDES)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    state = build_lm_trainer(cfg, lm_config_from(cfg, 40), mesh).init(jax.random.PRNGKey(0))
    assert sizes["parameters"] == _device0_bytes(state.params)
    assert sizes["optimizer state"] == _device0_bytes(state.opt_state)
    total = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    assert 4 * total / 8 < sizes["parameters"] < 4 * total  # sharded, not fully 8 ways
    # batch: text, codes [8, 8, 32] and two lengths, int32, 8 rows over data x fsdp = 4 shards
    assert sizes["batch"] == 4 * 2 * (16 + 8 * 32 + 2)
    state_bytes = sizes["parameters"] + sizes["optimizer state"] + sizes["other state"]
    key_bytes = 8
    assert sizes["arguments (compiler)"] == state_bytes + sizes["batch"] + key_bytes
    assert sizes["temporaries"] > 0
    printed = capsys.readouterr().out
    assert "8 x CPU devices standing in for 8 accelerators" in printed
    assert result["carries_over"]["parameters"] == "yes"
    assert result["carries_over"]["temporaries"] == "no (CPU compiler)"
    saved = json.loads((tmp_path / "memory.json").read_text())
    assert saved["bytes_per_device"] == sizes and saved["mesh"]["tensor"] == 2


def test_replicated_bytes_are_the_whole_tree():
    """A hand-computed case: on data=8 every parameter is whole on every device."""
    mesh = make_mesh({"data": 8})
    tree = {
        "w": jax.ShapeDtypeStruct((64, 24), np.float32),
        "b": jax.ShapeDtypeStruct((24,), np.int32),
    }
    rep = jax.tree_util.tree_map(
        lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), tree
    )
    assert memory.device_bytes(tree, rep) == 4 * (64 * 24 + 24)
    fsdp = make_mesh({"fsdp": 8})
    split = {
        "w": jax.sharding.NamedSharding(fsdp, jax.sharding.PartitionSpec("fsdp", None)),
        "b": jax.sharding.NamedSharding(fsdp, jax.sharding.PartitionSpec("fsdp")),
    }
    assert memory.device_bytes(tree, split) == 4 * (8 * 24 + 3)
