"""The package's import graph, read from the source with ``ast``: no cycle, no import from above.

Every ``import``/``from ... import`` of an ``s12mae`` module counts, at module level and inside
functions alike (a function-level import hides a cycle, it does not remove it). Importing
``a.b.c`` also runs the package ``a.b`` (its ``__init__``), so that counts as an import of ``a.b``
too, except from inside ``a.b`` itself (Python has already started it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import s12mae

PACKAGE = Path(s12mae.__file__).resolve().parent

LAYERS: list[tuple[str, set[str]]] = [
    ("foundations", {"files", "paths", "rng", "times", "resources", "storage", "distributed"}),
    ("sensor specs", {"sensors"}),
    ("raw samples, model input, models", {"inputs", "readers", "simulate", "simulate_landscape", "models"}),
    ("pairing and layouts", {"pairing", "layouts", "stac", "stac_items"}),
    ("shards", {"shards"}),
    ("datasets and statistics", {"data", "stats"}),
    ("configs, methods, exports", {"config", "runtime", "methods", "export", "viz"}),
    ("training and evaluation", {"train", "evaluation", "checkpoint_import"}),
    ("encoders at work", {"inference", "integrations"}),
    ("entry points", {"cli", "demo", "info", "__main__"}),
]
"""Bottom to top. A module may import from its own layer or a lower one, never from a higher one
(the layer of ``s12mae.x.y`` is the layer of ``x``). ``config`` shares its layer with ``methods``
so per-method config sections may live on either side (the cycle check still applies)."""


def module_name(path: Path) -> str:
    parts = ("s12mae", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The ``s12mae`` modules that module ``name`` imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".")[: len(name.split(".")) - node.level + is_package]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]  # `from pkg import module`
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "s12mae" and target in known:
                found.add(target)
    for target in list(found):  # importing a.b.c first runs a.b's __init__
        parts = target.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return {t for t in found if not (name == t or name.startswith(t + "."))}  # own packages: running


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imported(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for level, (_, names) in enumerate(LAYERS):
        if top in names:
            return level
    raise KeyError(top)


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_module_has_a_layer():
    missing = sorted({m.split(".")[1] for m in modules() if "." in m} - set().union(*(n for _, n in LAYERS)))
    assert not missing, f"add {missing} to a layer in tests/test_imports.py::LAYERS"


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for module, targets in import_graph().items():
        if module == "s12mae":
            continue
        for target in sorted(targets):
            if target != "s12mae" and layer_of(target) > layer_of(module):
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
                              f"({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


# -- the checker itself finds what it must find ---------------------------------------------------


def test_checker_sees_function_level_relative_and_parent_package_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "s12mae"
    (pkg / "shards").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "layouts.py").write_text("def f():\n    from s12mae.shards.write import g\n")
    (pkg / "shards" / "__init__.py").write_text("from .write import g\n")
    (pkg / "shards" / "write.py").write_text("def g():\n    from s12mae import layouts\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    graph = import_graph()
    assert graph["s12mae.layouts"] == {"s12mae.shards.write", "s12mae.shards"}
    assert graph["s12mae.shards"] == {"s12mae.shards.write"}
    assert graph["s12mae.shards.write"] == {"s12mae.layouts"}  # its own package is already running
    assert find_cycle(graph) == ["s12mae.layouts", "s12mae.shards", "s12mae.shards.write", "s12mae.layouts"]


@pytest.mark.parametrize("graph, cyclic", [({"a": {"b"}, "b": {"c"}, "c": set()}, False),
                                           ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True)])
def test_find_cycle(graph, cyclic):
    assert (find_cycle(graph) is not None) == cyclic


def test_pairing_and_stac_run_without_importing_torch():
    """Pairing 40M rows runs under a tight address-space cap (RLIMIT_AS); importing torch alone
    reserves about 3 GiB of address space, so the data-side modules must not pull it in."""
    import subprocess
    import sys

    code = ("import sys, s12mae.pairing, s12mae.stac, s12mae.sensors, s12mae.storage; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing the pairing modules imported {out.strip()}"
