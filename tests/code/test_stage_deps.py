"""Every module a DVC stage's command runs is one of that stage's dependencies, so changing the
code that makes an output always reruns the stage that makes it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "nucseg"
# The CLI only parses arguments and calls a stage (a help-text change must not rerun the
# pipeline); package __init__ files hold only a docstring.
NOT_STAGE_CODE = {"cli.py"}


def module_file(dotted: str) -> str | None:
    """`nucseg.core.unet` -> "core/unet.py" (a package's __init__ does not count); None if absent."""
    parts = dotted.split(".")[1:]
    if parts and (PACKAGE.joinpath(*parts).with_suffix(".py")).exists():
        return "/".join(parts) + ".py"
    return None


def nucseg_imports(tree: ast.AST) -> set[str]:
    """Modules of the package (as paths inside it) that a syntax tree imports, at any depth."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "nucseg":
            for alias in node.names:  # `from nucseg.core import unet` names a module, `... import build_unet` a name
                found.add(module_file(f"{node.module}.{alias.name}") or module_file(node.module))
        elif isinstance(node, ast.Import):
            found |= {module_file(alias.name) for alias in node.names if alias.name.startswith("nucseg.")}
    return found - {None}


def closure(roots: set[str]) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += nucseg_imports(ast.parse((PACKAGE / name).read_text()))
    return seen - NOT_STAGE_CODE


def command_roots(subcommand: str) -> set[str]:
    """What the CLI function behind `nucseg <subcommand>` imports."""
    cli = ast.parse((PACKAGE / "cli.py").read_text())
    for node in cli.body:
        if isinstance(node, ast.FunctionDef) and node.name == subcommand.replace("-", "_"):
            return nucseg_imports(node)
    raise AssertionError(f"`nucseg {subcommand}` has no function in cli.py")


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_every_stage_runs_a_nucseg_command():
    assert STAGES and all(stage["cmd"].split()[0] == "nucseg" for stage in STAGES.values())


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_lists_every_module_its_command_imports(name):
    stage = STAGES[name]
    needed = {f"src/nucseg/{module}" for module in closure(command_roots(stage["cmd"].split()[1]))}
    listed = {dep for dep in stage.get("deps", []) if isinstance(dep, str)}
    assert needed, f"stage {name}: found no module behind `{stage['cmd']}`"
    assert not needed - listed, f"stage {name} does not list {sorted(needed - listed)} in dvc.yaml deps"
    stale = {dep for dep in listed if dep.startswith("src/nucseg/")} - needed
    assert not stale, f"stage {name} lists {sorted(stale)}, which its command does not import"


def test_imports_are_found_inside_functions_and_subpackages():
    tree = ast.parse("def f():\n    from nucseg import io\n    import nucseg.core.metrics\n"
                     "from nucseg.core.rle import rle_encode\nfrom nucseg.mlops import tracking\n"
                     "from nucseg import not_a_module\n")
    assert nucseg_imports(tree) == {"io.py", "core/metrics.py", "core/rle.py", "mlops/tracking.py"}
