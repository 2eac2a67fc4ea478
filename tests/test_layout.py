"""The house rules for imports, checked on the source (no pizzactl module is imported here).

- pizzactl's own modules are imported at module level, so the import graph that import-linter
  checks (`lint-imports`, contracts in pyproject.toml) is the real one. An import inside a function
  is allowed only where it keeps a heavy library lazy: the imported module is a heavy library, or a
  pizzactl module that imports one at module level (directly or through its own imports).
- Heavy libraries never at module level outside modules that exist for them is ruff's TID253
  (pyproject.toml); `pizzactl --help` importing no TensorFlow is tested in test_cli.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "pizzactl"

# Slow to import, or only present with an extra: these are imported where they are used.
HEAVY = {
    "tensorflow",
    "keras",
    "tf_keras",
    "kubernetes",
    "docker",
    "matplotlib",
    "torch",
    "efficientnet_lite_pytorch",
    "ai_edge_litert",
    "tflite_runtime",
    "fastapi",
    "starlette",
    "uvicorn",
    "aiohttp",
    "prometheus_client",
    "kaggle",
    "kagglehub",
    "sklearn",
    "yaml",
    "PIL",
    "numpy",
    "requests",
    "httpx",
    "grpc",
    "google",
    "playwright",
    "IPython",
    "multipart",
    "httptools",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "docker" in path.relative_to(PACKAGE).parts[:1]:  # the image build script, not a module
            continue
        out[module_name(path)] = (path, ast.parse(path.read_text(), str(path)))
    return out


def imported(node: ast.Import | ast.ImportFrom, here: str, is_package: bool) -> list[str]:
    """The absolute module names one import statement names (`from a import b` counts a.b too)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parent = here.split(".")
        drop = node.level - 1 if is_package else node.level
        parent = parent[: len(parent) - drop] if drop else parent
        base = ".".join([*parent, base]) if base else ".".join(parent)
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported (module body, incl. its if/try blocks)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    walk(node.body)
                walk(node.orelse)
            elif isinstance(node, ast.Try):
                walk(node.body)
                for handler in node.handlers:
                    walk(handler.body)
                walk(node.orelse)
                walk(node.finalbody)

    walk(tree.body)
    return found


def nested_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports inside functions (they run on call, hiding an edge from the module graph)."""
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    found.append(node)
    return found


def heavy_modules(src: dict[str, tuple[Path, ast.Module]]) -> set[str]:
    """pizzactl modules whose import pulls in a heavy library at module level, transitively."""
    edges: dict[str, set[str]] = {}
    heavy: set[str] = set()
    for name, (path, tree) in src.items():
        edges[name] = set()
        for node in top_level_imports(tree):
            for target in imported(node, name, path.name == "__init__.py"):
                root = target.split(".")[0]
                if root in HEAVY:
                    heavy.add(name)
                elif root == "pizzactl" and target in src:
                    edges[name].add(target)
    changed = True
    while changed:
        changed = False
        for name, targets in edges.items():
            if name not in heavy and targets & heavy:
                heavy.add(name)
                changed = True
    return heavy


def test_own_modules_are_imported_at_module_level():
    src = sources()
    heavy = heavy_modules(src)
    offenders = []
    for name, (path, tree) in src.items():
        for node in nested_imports(tree):
            targets = [t for t in imported(node, name, path.name == "__init__.py") if t.split(".")[0] == "pizzactl"]
            own = [t for t in targets if t in src]
            if own and not any(t in heavy for t in own):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno} imports {', '.join(own)} inside a function")
    assert not offenders, (
        "import pizzactl's own modules at module level (only a module that pulls in a heavy library may "
        "be imported lazily):\n" + "\n".join(offenders)
    )


def test_the_rule_catches_a_lazy_import_of_a_light_module(tmp_path):
    tree = ast.parse("def f():\n    from pizzactl import errors\n    import tensorflow\n")
    names = [t for node in nested_imports(tree) for t in imported(node, "pizzactl.x", False)]
    assert "pizzactl.errors" in names and "tensorflow" in names
    assert "pizzactl.errors" not in heavy_modules(sources())


def test_layers_hold(tmp_path):
    """import-linter's contracts (pyproject.toml): no cycle between layers, no upward import."""
    linter = Path(sys.executable).with_name("lint-imports")
    if not linter.exists():
        pytest.fail("lint-imports is missing: pip install -e '.[dev]'")
    root = SRC.parent
    done = subprocess.run(
        [str(linter), "--no-cache", "--no-logo"], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
