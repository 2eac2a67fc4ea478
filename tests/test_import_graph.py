"""The layers of issue 26 that the code can check by itself: remote training and deploy never import
each other, and the cluster/container plumbing (pizzactl.kube) imports neither of them nor the CLI.

Every import statement counts, in-function ones too (a lazy import is still an edge of the graph),
read with `ast` from the installed package's source, so nothing is imported to check it. The same
contracts for import-linter: independence of pizzactl.deploy and pizzactl.train.remote, and
pizzactl.kube forbidden to import pizzactl.deploy, pizzactl.train and pizzactl.cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pizzactl

SRC = Path(pizzactl.__file__).resolve().parent


def _module(path: Path) -> str:
    parts = ["pizzactl", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every pizzactl module `path` imports, as dotted names (`from a import b` counts a.b too)."""
    found: set[str] = set()
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "pizzactl" or name.startswith("pizzactl.")}


def _edges(inside: str) -> dict[str, set[str]]:
    return {
        _module(path): _imports(path)
        for path in sorted(SRC.rglob("*.py"))
        if _module(path) == inside or _module(path).startswith(inside + ".")
    }


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_remote_training_and_deploy_do_not_import_each_other():
    upward = [
        f"{module} -> {name}"
        for source, target in (("pizzactl.deploy", "pizzactl.train"), ("pizzactl.train.remote", "pizzactl.deploy"))
        for module, names in _edges(source).items()
        for name in sorted(names)
        if _under(name, target)
    ]
    assert upward == []


def test_kube_imports_neither_deploy_nor_train_nor_the_cli():
    above = ("pizzactl.deploy", "pizzactl.train", "pizzactl.cli", "pizzactl.up")
    upward = [
        f"{module} -> {name}"
        for module, names in _edges("pizzactl.kube").items()
        for name in sorted(names)
        if any(_under(name, package) for package in above)
    ]
    assert upward == []
