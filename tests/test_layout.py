"""The package's structure, read from its own imports with ``ast``: layers import only downward,
no import cycles, and no imports of the package's own modules hidden inside functions (the
CLI's lazy loads excepted: ``oats --help`` must not import torch)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

LAYERS = [
    ("oats.errors",),
    ("oats.config", "oats.resources", "oats.untrusted"),
    ("oats.core",),
    ("oats.methods",),
    ("oats.models",),
    ("oats.corpora",),
    ("oats.data",),
    ("oats.compress",),
    ("oats.runs",),
    ("oats.deploy",),
    ("oats.evaluation",),
    ("oats.explain",),
    ("oats.runner",),
    ("oats.cli",),
    ("oats",),  # the package's face: re-exports the public API
    ("ui",),
    ("pages", "app"),
]
"""Lowest first; the README's "Where things live" tells the same story."""

LAZY_ALLOWED = {"oats.cli"}
"""Inside ``oats``, only the CLI loads its own modules lazily. The app's shell (``ui.runtime``)
does too, on purpose: its first page paints before torch is imported, while a background
thread imports the heavy modules."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = list((REPO / "oats").rglob("*.py")) + list((REPO / "ui").rglob("*.py"))
    files += list((REPO / "pages").glob("*.py")) + [REPO / "app.py"]
    return {_module_name(p): p for p in files}


def _layer(module: str) -> int:
    best, best_len = None, -1
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and len(n) > best_len:
                best, best_len = i, len(n)
    assert best is not None, f"{module} is on no layer: add it to LAYERS and to the README"
    return best


def _targets(node: ast.AST, module: str, is_pkg: bool, known: set[str]) -> list[str]:
    """The package's own modules an import statement loads."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_pkg else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            src = ".".join(base + ([node.module] if node.module else []))
        else:
            src = node.module or ""
        # "from oats.models import zoo" loads oats.models.zoo
        names = [f"{src}.{a.name}" if f"{src}.{a.name}" in known else src for a in node.names]
    out = []
    for n in names:
        while n and n not in known:
            n = n.rpartition(".")[0]
        if n:
            out.append(n)
    return out


def _imports(lazy: bool = False) -> dict[str, set[str]]:
    """module -> own modules it imports (module level, or inside functions with ``lazy``)."""
    sources = _sources()
    known = set(sources)
    graph: dict[str, set[str]] = {m: set() for m in sources}
    for module, path in sources.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        inner = {id(x) for f in funcs for x in ast.walk(f) if isinstance(x, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and ((id(node) in inner) == lazy):
                graph[module].update(t for t in _targets(node, module, is_pkg, known) if t != module)
    return graph


def test_no_function_local_imports_of_the_package_outside_the_cli():
    found = sorted(f"{m} imports {t} inside a function" for m, ts in _imports(lazy=True).items()
                   if m.startswith("oats") and m not in LAZY_ALLOWED for t in ts)
    assert not found, "\n".join(found)


def test_layers_import_only_downward():
    upward = sorted(f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
                    for m, ts in _imports().items() for t in ts
                    if _layer(t) > _layer(m) and not (t == "oats" and m.startswith("oats")))
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    graph = _imports()
    for m, ts in _imports(lazy=True).items():
        graph[m] |= ts
    # importing a submodule runs its package's __init__ first: that edge is not a loop of the code
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "\n".join(cycles)


def test_the_checks_can_fail(tmp_path, monkeypatch):
    """The graph reader sees a function-local import and an upward one when they are there."""
    tree = ast.parse("def f():\n    from oats.models import zoo\nfrom oats.runner import jobs\n")
    known = {"oats", "oats.models", "oats.models.zoo", "oats.runner", "oats.runner.jobs"}
    nodes = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert {t for n in nodes for t in _targets(n, "oats.core.decompose", False, known)} == {
        "oats.models.zoo", "oats.runner.jobs"}
    assert _layer("oats.runner.jobs") > _layer("oats.core.decompose")
