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
