"""No import cycles among the modules of each daemon's package (issue 9).

The graph is read from the sources with ast, so every import counts: module level, inside a
function (a lazy import still ties the two modules together) and under TYPE_CHECKING.
``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``'s
``__init__``; the implicit import of a parent package is not an edge (every ``__init__`` that
re-exports its submodules would otherwise be a cycle with them).

Also: the settings modules import no model library, so a bad settings file fails fast (issue 11).
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGES = ["fedllm_client", "fedllm_server"]
Graph = dict[str, set[str]]


def _modules(package: str) -> dict[str, Path]:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations
    root = Path(next(iter(spec.submodule_search_locations)))
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join([package, *parts])] = path
    return found


def _imported(name: str, path: Path, tree: ast.AST) -> Iterator[str]:
    """Every module ``name`` names in an import (absolute names, relative ones resolved)."""
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph(modules: dict[str, Path]) -> Graph:
    graph: Graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        named = set(_imported(name, path, tree))
        # "from pkg import sub" names both pkg and pkg.sub: keep the most specific module
        targets = {m for m in named if m in modules}
        graph[name] = {m for m in targets if not any(o.startswith(m + ".") for o in targets)}
        graph[name] -= {name}
    return graph


def find_cycle(graph: Graph) -> list[str] | None:
    """One cycle (as a path that returns to its start), or None; iterative DFS."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, on_path = [start], {start}
        pending = [iter(sorted(graph[start]))]
        while pending:
            nxt = next(pending[-1], None)
            if nxt is None:
                finished = path.pop()
                done.add(finished)
                on_path.discard(finished)
                pending.pop()
            elif nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                pending.append(iter(sorted(graph.get(nxt, ()))))
    return None


@pytest.mark.parametrize("package", PACKAGES)
def test_package_modules_import_each_other_without_a_cycle(package: str) -> None:
    graph = import_graph(_modules(package))
    assert len(graph) > 5  # the walk found the package's modules
    assert find_cycle(graph) is None


def test_a_lazy_import_back_is_found_as_a_cycle(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    a.write_text("from pkg.b import thing\n")
    b.write_text("import pkg.c\n")
    c.write_text("def late():\n    from pkg import a\n")
    graph = import_graph({"pkg.a": a, "pkg.b": b, "pkg.c": c})
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]


def test_the_client_graph_sees_its_real_edges() -> None:
    graph = import_graph(_modules("fedllm_client"))
    assert "fedllm_client.local_model" in graph["fedllm_client.lora_model"]
    assert "fedllm_client.lora_model" in graph["fedllm_client.learner"]  # lazy import
    assert "fedllm_client.trigger" in graph["fedllm_client.learner"]  # "from pkg import mod"


# What a settings module may not pull in: a bad settings file must fail in under 2 s, and each
# of these takes seconds to import; the model code imports them where the model is built.
HEAVY = ("torch", "transformers", "peft", "ml_dtypes", "dp_accounting", "scipy")
# What a daemon imports before it can refuse a bad settings file (issue 11: fail in < 2 s).
SETTINGS_MODULES = ["fedllm_server.settings", "fedllm_client.settings", "fedllm_server.cli"]


def _imported_in_fresh_process(module: str) -> set[str]:
    """Top-level packages in sys.modules after importing ``module`` in a new interpreter."""
    probe = (
        f"import sys, {module}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    return set(done.stdout.split())


@pytest.mark.parametrize("module", SETTINGS_MODULES)
def test_reading_settings_imports_no_model_library(module: str) -> None:
    loaded = _imported_in_fresh_process(module)
    assert "pydantic" in loaded  # the probe saw the module's own imports
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))
