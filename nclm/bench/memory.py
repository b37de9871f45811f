"""`nclm bench memory`: per-device memory of a training step on a target mesh, compiled ahead of
time without the hardware (catch an OOM before the pod is booked).

    nclm bench memory --config configs/lm/valle.py --mesh data=2,fsdp=4,tensor=2 --topology v5e:4x4
    nclm bench memory --config configs/lm/soundstorm.py --mesh fsdp=8 --devices 8
    nclm bench memory --config configs/codec/encodec_24khz.py --devices 8

The trainer's own construction (`build_lm_trainer` / `build_codec_trainer`: the same shardings,
the same jitted step, parameters only as `jax.eval_shape` shapes) is lowered for abstract inputs
placed on the target mesh and compiled; nothing is initialised or run.

Targets: `--topology NAME` compiles for a TPU slice through libtpu (`pip install
"libtpu==0.0.42.*"`, the pin of jax[tpu] 0.10.2; no TPU needed), so every figure is the TPU
compiler's. `--devices N` compiles for N CPU devices standing in for N accelerators: the
parameter, optimizer-state and batch bytes per device come from the shardings and carry over to
any backend; the temporaries are the CPU compiler's (other fusion, no bf16 matmuls, no
flash-attention kernels) and do not. Attention (`lm.attention=auto`) is chosen by the default
backend of the machine that compiles: a CPU here, so a TPU target is measured with the blockwise
XLA attention rather than the splash kernel, an upper bound on its temporaries.
"""

from __future__ import annotations

import argparse
import math

from nclm.bench.report import finish

_MIB = 2**20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE.py[:ARG]|config.json")
    parser.add_argument(
        "--mesh", metavar="data=D,fsdp=F,tensor=T", help="the target mesh (default: the config's)"
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--topology", metavar="NAME", help="a TPU slice, e.g. v5e:4x4 (needs libtpu installed)"
    )
    target.add_argument(
        "--devices", type=int, metavar="N", help="N CPU devices stand in (default: all local)"
    )
    parser.add_argument(
        "--bucket",
        metavar="TEXT,FRAMES",
        help="LM: the batch bucket measured (default: the largest text and frame buckets)",
    )
    parser.add_argument(
        "--text-vocab", type=int, default=256, help="LM: phoneme table size (the corpus's; 256)"
    )
    parser.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")


def parse_mesh(text: str) -> dict[str, int]:
    shape = {}
    for item in text.split(","):
        name, _, size = item.partition("=")
        if not size.lstrip("-").isdigit():
            raise ValueError(f"--mesh {text!r}: expected data=D,fsdp=F,tensor=T (integers)")
        shape[name.strip()] = int(size)
    return shape


def target_devices(args) -> tuple[list, str, bool]:
    """(devices, description, whether the compiler is the target's own)."""
    import jax

    if args.topology:
        try:
            from jax.experimental import topologies

            topology = topologies.get_topology_desc(
                args.topology,
                "tpu",
                chip_config_name="default",
                chips_per_host_bounds=(2, 2, 1),
                num_slices=1,
                wrap=(False, False, False),
            )
        except Exception as e:  # no libtpu, or an unknown topology name
            raise ValueError(
                f"--topology {args.topology}: no TPU compiler ({' '.join(str(e).split())[:200]}); "
                'install it with: pip install "libtpu==0.0.42.*"'
            ) from None
        devices = list(topology.devices)
        kind = devices[0].device_kind
        return devices, f"{len(devices)} x {kind} (topology {args.topology}, libtpu)", True
    if args.devices and jax.config.jax_num_cpu_devices < args.devices:
        try:  # only before the CPU backend starts
            jax.config.update("jax_num_cpu_devices", args.devices)
        except RuntimeError:
            pass
    cpu = jax.devices("cpu")
    count = args.devices or len(cpu)
    if len(cpu) < count:
        raise ValueError(
            f"--devices {count}: only {len(cpu)} CPU devices (set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={count} before starting)"
        )
    return cpu[:count], f"{count} x CPU devices standing in for {count} accelerators", False


def device_bytes(abstract_tree, shardings) -> int:
    """Bytes one device holds of a tree placed with `shardings` (the shard shape's bytes)."""
    import jax

    def one(leaf, sharding):
        return math.prod(sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize

    return sum(jax.tree_util.tree_leaves(jax.tree_util.tree_map(one, abstract_tree, shardings)))


def _placed(abstract_tree, shardings):
    import jax

    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings
    )


def lm_program(cfg, mesh, args) -> tuple:
    """(jitted step, abstract (state, batch, key), groups, batch description) of an LM config."""
    import jax
    import jax.numpy as jnp

    from nclm.data.token_pipeline import batch_rows
    from nclm.lm.experiment import lm_config_from
    from nclm.sharding import batch_sharding, batch_shards, replicated
    from nclm.train.lm_train import BATCH_RANKS, batch_keys, build_lm_trainer

    lm_cfg = lm_config_from(cfg, args.text_vocab)
    rules = tuple(tuple(r) for r in cfg.sharding_rules)
    d = cfg.data
    lt, t = max(d.text_buckets), max(d.frame_buckets)
    if args.bucket:
        lt, t = (int(x) for x in args.bucket.split(","))
    rows = batch_rows(lt, t, d.max_tokens, batch_shards(mesh, rules))
    shapes = {
        "text": (rows, lt),
        "text_len": (rows,),
        "codes": (rows, lm_cfg.num_codebooks, t),
        "code_len": (rows,),
        "semantic": (rows, t),
    }
    trainer = build_lm_trainer(cfg, lm_cfg, mesh)
    batch = {
        k: jax.ShapeDtypeStruct(shapes[k], jnp.int32, sharding=batch_sharding(mesh, BATCH_RANKS[k]))
        for k in batch_keys(lm_cfg)
    }
    state = _placed(trainer.abstract_state, trainer.state_shardings)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated(mesh))
    return trainer.step, (state, batch, key), f"{rows} rows x (text {lt} + frames {t})"


def codec_program(cfg, mesh, args) -> tuple:
    """The same for a codec (GAN) config: one batch of `data.batch_size` segments."""
    import jax
    import jax.numpy as jnp

    from nclm.codec.experiment import codec_config_from
    from nclm.sharding import batch_sharding, replicated
    from nclm.train.codec_train import build_codec_trainer, segment_samples

    segment = segment_samples(cfg, codec_config_from(cfg))
    rows = cfg.data.batch_size
    trainer = build_codec_trainer(cfg, mesh, segment, rows)
    sharding = batch_sharding(mesh, 2)
    batch = {
        k: jax.ShapeDtypeStruct((rows, segment), jnp.float32, sharding=sharding)
        for k in ("wav", "mask")
    }
    state = _placed(trainer.abstract_state, trainer.state_shardings)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated(mesh))
    return trainer.step, (state, batch, key), f"{rows} segments x {segment} samples"


def state_groups(state) -> dict[str, int]:
    """Bytes per device of the train state's fields, as parameters (generator and
    discriminator), optimizer state (their moments) and other state (step, EMA codebooks)."""
    import dataclasses

    groups = {"parameters": 0, "optimizer state": 0, "other state": 0}
    for field in dataclasses.fields(state):
        name = field.name
        group = "optimizer state" if "opt_state" in name else None
        group = group or ("parameters" if name.endswith("params") else "other state")
        value = getattr(state, name)
        groups[group] += device_bytes(value, _shardings_of(value))
    return groups


def _shardings_of(tree):
    import jax

    return jax.tree_util.tree_map(lambda a: a.sharding, tree)


def measure(step, abstract_args) -> dict:
    """Compile `step` for its abstract arguments; bytes per device, by kind."""
    state, batch, _ = abstract_args
    compiled = step.lower(*abstract_args).compile()
    stats = compiled.memory_analysis()
    out = state_groups(state)
    out["batch"] = device_bytes(batch, _shardings_of(batch))
    out["arguments (compiler)"] = stats.argument_size_in_bytes
    out["temporaries"] = stats.temp_size_in_bytes
    out["outputs not aliased"] = stats.output_size_in_bytes - stats.alias_size_in_bytes
    out["peak estimate"] = (
        stats.argument_size_in_bytes + out["outputs not aliased"] + stats.temp_size_in_bytes
    )
    return out


def run(args: argparse.Namespace, overrides: list[str]) -> dict:
    from nclm.bench.report import environment
    from nclm.config import load_config
    from nclm.sharding import make_mesh

    cfg = load_config(args.config, overrides)
    devices, target, native = target_devices(args)
    shape = parse_mesh(args.mesh) if args.mesh else dict(cfg.mesh)
    mesh = make_mesh(shape, devices)
    if "codec" in cfg and "discriminator" in cfg:
        step, abstract_args, batch = codec_program(cfg, mesh, args)
    elif "lm" in cfg and "objective" in cfg:
        step, abstract_args, batch = lm_program(cfg, mesh, args)
    else:
        raise ValueError(f"--config {args.config}: not a training experiment")
    sizes = measure(step, abstract_args)
    mesh_text = ",".join(f"{k}={v}" for k, v in mesh.shape.items())
    carry = {k: "yes" for k in sizes}
    if not native:
        for k in ("temporaries", "outputs not aliased", "peak estimate"):
            carry[k] = "no (CPU compiler)"
    where = f"--topology {args.topology}" if args.topology else f"--devices {len(devices)}"
    command = f"nclm bench memory --config {args.config} --mesh {mesh_text} {where}"
    command += "".join(f" {o}" for o in overrides)
    print(f"{command}\ntarget: {target}\nmesh: {mesh_text}; batch: {batch}")
    print(f"{'per device':<22} {'MiB':>10}  carries over to the hardware")
    for k, v in sizes.items():
        print(f"{k:<22} {v / _MIB:>10.1f}  {carry[k]}")
    result = {"command": command, "target": target, "mesh": dict(mesh.shape), "batch": batch}
    result.update(environment(), bytes_per_device=sizes, carries_over=carry)
    return finish(result, args.json)
