"""One TensorDict (issue 9): the wire's ``name -> numpy array`` (fedllm_proto.codec) is the only
definition; every other module imports it, so a client state, a LoRA state and a server delta
are one type."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

PACKAGES = ["fedllm_proto", "fedllm_core", "fedllm_client", "fedllm_server", "fedllm_experiment"]
HOME = "fedllm_proto.codec"


def _assigned_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)  # e.g. TensorDict: TypeAlias = ...
    return names


def _definitions(package: str) -> list[str]:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations
    root = Path(next(iter(spec.submodule_search_locations)))
    found = []
    for path in sorted(root.rglob("*.py")):
        if "TensorDict" in _assigned_names(ast.parse(path.read_text())):
            module = ".".join([package, *path.relative_to(root).with_suffix("").parts])
            found.append(module.removesuffix(".__init__"))
    return found


def test_tensordict_is_defined_once_in_the_wire_codec() -> None:
    assert [m for p in PACKAGES for m in _definitions(p)] == [HOME]


def test_the_names_others_import_are_that_one_alias() -> None:
    home = importlib.import_module(HOME).TensorDict
    for module in ("fedllm_server.tensors", "fedllm_client.state", "fedllm_core.lora"):
        assert importlib.import_module(module).TensorDict is home, module


def test_a_second_definition_would_be_found() -> None:
    tree = ast.parse("import numpy as np\nTensorDict: type = dict[str, np.ndarray]\n")
    assert "TensorDict" in _assigned_names(tree)
