"""The package's layers: imports only point down (cli → stages → mlops → core → config, io)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from test_stage_deps import PACKAGE, nucseg_imports

LAYERS = {"core": 1, "mlops": 2, "stages": 3}  # config.py and io.py are layer 0, cli.py the top


def layer(module: str) -> int:
    return LAYERS.get(module.split("/")[0], 4 if module == "cli.py" else 0)


MODULES = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down(module):
    imported = nucseg_imports(ast.parse((PACKAGE / module).read_text()))
    upward = sorted(m for m in imported if layer(m) > layer(module))
    assert not upward, f"{module} imports {upward} from a layer above it"


def test_no_stage_imports_another_stage():
    for module in (m for m in MODULES if m.startswith("stages/")):
        others = {m for m in nucseg_imports(ast.parse((PACKAGE / module).read_text())) if m.startswith("stages/")}
        assert not others - {module}, f"{module} imports {sorted(others)}: shared code belongs in core or mlops"


def test_every_layer_is_a_package():
    assert all((PACKAGE / name / "__init__.py").exists() for name in LAYERS)
    assert Path(PACKAGE / "cli.py").exists()


def third_party_roots(tree: ast.AST) -> set[str]:
    """Top-level packages a syntax tree imports, at any depth (inside functions too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
    return found


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("core/")])
def test_core_knows_nothing_of_mlflow_or_dvc(module):
    roots = third_party_roots(ast.parse((PACKAGE / module).read_text()))
    assert not roots & {"mlflow", "dvc"}, f"{module} imports {sorted(roots & {'mlflow', 'dvc'})}: that belongs in mlops"


def test_the_import_finder_sees_imports_inside_functions():
    tree = ast.parse("def f():\n    import mlflow.keras\n    from dvc.repo import Repo\nfrom . import x\n")
    assert third_party_roots(tree) == {"mlflow", "dvc"}
