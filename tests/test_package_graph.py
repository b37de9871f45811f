"""The packages import downwards only (shared/DESIGN.md): every `nclm` import, inside functions too,
goes to a package of the same or a lower layer, so no two packages import each other."""

import ast
import sys
from pathlib import Path

import nclm

# Lowest first. Root modules (atomic, config, sharding) serve everything; cli is the top.
LAYERS = [
    {"atomic", "cli_args", "config", "paths", "sharding", "distributed"},
    {"nn", "audio", "text"},
    {"codec"},
    {"data", "lm"},
    {"decode"},
    {"tasks", "train", "eval"},
    {"bench"},
    {"cli", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
ROOT = Path(nclm.__file__).parent


def _unit(module: str) -> str | None:
    """`nclm.codec.model` -> 'codec'; `nclm.cli` -> 'cli'; `nclm` itself -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "nclm" and len(parts) > 1 else None


def import_edges() -> list[tuple[str, str, str]]:
    """(importing unit, imported unit, file) for every import of nclm in the package."""
    edges = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts == ("__init__",):
            continue
        unit = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
                if node.module == "nclm":  # from nclm import codec
                    names = [f"nclm.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                target = _unit(name)
                if target and target != unit:
                    edges.append((unit, target, str(path.relative_to(ROOT.parent))))
    return edges


def test_every_unit_has_a_layer():
    units = {p.relative_to(ROOT).with_suffix("").parts[0] for p in ROOT.rglob("*.py")}
    units.discard("__init__")
    assert units <= set(RANK), f"add to LAYERS: {sorted(units - set(RANK))}"


def test_packages_import_downwards_only():
    upward = [f"{f}: {a} -> {b}" for a, b, f in import_edges() if RANK[b] > RANK[a]]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)
    same_layer = {(a, b) for a, b, _ in import_edges() if RANK[a] == RANK[b]}
    cycles = sorted((a, b) for a, b in same_layer if (b, a) in same_layer)
    assert not cycles, f"packages importing each other: {cycles}"


def test_the_check_sees_function_level_imports(tmp_path, monkeypatch):
    """A cycle hidden inside a function is still an edge (it is how the old cycles hid)."""
    fake = tmp_path / "nclm"
    (fake / "codec").mkdir(parents=True)
    (fake / "eval").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "codec" / "cli.py").write_text("def f():\n    from nclm.eval import codec_eval\n")
    (fake / "eval" / "codec_eval.py").write_text("from nclm.codec import model\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    edges = {(a, b) for a, b, _ in import_edges()}
    assert edges == {("codec", "eval"), ("eval", "codec")}
