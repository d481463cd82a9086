"""The package layout is the architecture: each layer imports only from the layers before it.

config -> data -> train -> rundir -> report -> flows -> cli (errors.py and reading.py underneath
them all).
Every `import` counts, at the top of a module or inside a function, so a lazy import cannot
hide a dependency that points up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "src" / "mlpkit"
LAYERS = ["errors", "reading", "config", "data", "train", "rundir", "report", "flows", "cli"]


def layer_of(module: Path) -> str:
    """The layer a source file belongs to: its package, or its own name at the top level."""
    parts = module.relative_to(SOURCE).with_suffix("").parts
    return parts[0]


def imported_layers(module: Path) -> set[str]:
    """The mlpkit layers a module imports from, wherever the import statement stands."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = node.module.split(".")
            if names[0] == "mlpkit":
                # `from mlpkit.flows import fit` and `from mlpkit import errors` alike
                found.add(names[1] if len(names) > 1 else node.names[0].name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names = alias.name.split(".")
                if names[0] == "mlpkit" and len(names) > 1:
                    found.add(names[1])
    return found & set(LAYERS)  # `from mlpkit import __version__` is no layer


MODULES = sorted(
    path for path in SOURCE.rglob("*.py") if path.parent != SOURCE or path.stem in LAYERS
)


def test_every_module_sits_in_a_layer() -> None:
    assert {layer_of(path) for path in MODULES} == set(LAYERS)
    assert {path.name for path in SOURCE.glob("*.py")} == {
        "__init__.py",
        "__main__.py",
        "errors.py",
        "reading.py",
        "cli.py",
    }


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(SOURCE)))
def test_imports_point_only_down(module: Path) -> None:
    rank = LAYERS.index(layer_of(module))
    upward = {name for name in imported_layers(module) if LAYERS.index(name) > rank}
    assert not upward, f"{module.relative_to(SOURCE)} imports from a later layer: {upward}"


@pytest.mark.parametrize(
    "package", [p for p in SOURCE.iterdir() if (p / "__init__.py").exists()], ids=lambda p: p.name
)
def test_a_package_init_imports_nothing(package: Path) -> None:
    """Importing a package never imports torch: its __init__ is a docstring."""
    tree = ast.parse((package / "__init__.py").read_text())
    assert [type(node) for node in tree.body] == [ast.Expr]
