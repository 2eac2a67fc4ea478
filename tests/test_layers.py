"""The import layers (issue 26): the model contract, `pizzactl.model`, sits below everything that
uses it. Serving, training, evaluation, deployment and the CLI import it; it imports none of them,
in-function imports included, so a newcomer can read it (and a notebook import it) on its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pizzactl

PACKAGE = Path(pizzactl.__file__).parent
# What the model contract may build on: the package root (__version__) and the modules below it.
BELOW_MODEL = ("pizzactl", "pizzactl.config", "pizzactl.errors", "pizzactl.console", "pizzactl.tfimport")
BELOW_MODEL += ("pizzactl.hashing", "pizzactl.files", "pizzactl.pids")


def pizzactl_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of pizzactl's own modules in a file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module == "pizzactl":  # `from pizzactl import x`: x is a module, or a name like __version__
                found += [(node.lineno, _module_or_package(alias.name)) for alias in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level:
            found.append((node.lineno, "<relative import>"))
    return [(line, name) for line, name in found if name.split(".")[0] in ("pizzactl", "<relative import>")]


def _module_or_package(name: str) -> str:
    return f"pizzactl.{name}" if (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file() else "pizzactl"


def allowed_below_model(module: str) -> bool:
    return module in BELOW_MODEL or module == "pizzactl.model" or module.startswith("pizzactl.model.")


def test_the_model_contract_imports_nothing_above_it():
    files = sorted((PACKAGE / "model").glob("*.py"))
    assert files, "pizzactl/model/ is missing"
    upward = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {module}"
        for path in files
        for line, module in pizzactl_imports(path)
        if not allowed_below_model(module)
    ]
    assert upward == [], "pizzactl.model imports from above it:\n" + "\n".join(upward)
