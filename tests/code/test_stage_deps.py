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


# A `foreach` stage is checked through its template: the same command and deps for every item.
STAGES = {name: stage.get("do", stage) for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items()}


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


# ---- params: what a stage's code reads of params.yaml is what dvc.yaml declares for it ----

def functions_of(modules: set[str]) -> dict[str, list[ast.FunctionDef]]:
    """Every function and method of `modules`, by its name (a name may have several)."""
    found: dict[str, list[ast.FunctionDef]] = {}
    for module in modules:
        for node in ast.walk(ast.parse((PACKAGE / module).read_text())):
            if isinstance(node, ast.FunctionDef):
                found.setdefault(node.name, []).append(node)
    return found


def sections_read(function: ast.FunctionDef, name: str) -> set[str]:
    """Sections read as `name["section"]` or `name.get("section")` in `function`."""
    found = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == name \
                and isinstance(node.slice, ast.Constant):
            found.add(node.slice.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == name and node.args \
                and isinstance(node.args[0], ast.Constant):
            found.add(node.args[0].value)
    return found


def handed_on(function: ast.FunctionDef, name: str, functions: dict[str, list[ast.FunctionDef]]):
    """(callee, the callee's parameter that receives `name`) for each call in `function` that
    passes `name` on, by position or keyword."""
    for node in ast.walk(function):
        if not isinstance(node, ast.Call):
            continue
        callee = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
        for definition in functions.get(callee, []):
            arguments = [a.arg for a in definition.args.args]
            arguments = arguments[1:] if arguments[:1] in (["self"], ["cls"]) else arguments
            for position, value in enumerate(node.args):
                if isinstance(value, ast.Name) and value.id == name and position < len(arguments):
                    yield definition, arguments[position]
            for keyword in node.keywords:
                if isinstance(keyword.value, ast.Name) and keyword.value.id == name and keyword.arg in arguments:
                    yield definition, keyword.arg


def params_read(subcommand: str) -> set[str]:
    """The params sections the code behind `nucseg <subcommand>` reads: from its stage's `run`,
    following the params dict through every call that hands it on."""
    cli = next(node for node in ast.parse((PACKAGE / "cli.py").read_text()).body
               if isinstance(node, ast.FunctionDef) and node.name == subcommand.replace("-", "_"))
    stage_module = next(m for m in nucseg_imports(cli) if m.startswith("stages/"))
    functions = functions_of(closure({stage_module}))
    run = next(node for node in ast.parse((PACKAGE / stage_module).read_text()).body
               if isinstance(node, ast.FunctionDef) and node.name == "run")
    read, seen, todo = set(), set(), [(run, "params")]
    while todo:
        function, name = todo.pop()
        if (id(function), name) in seen:
            continue
        seen.add((id(function), name))
        read |= sections_read(function, name)
        todo += list(handed_on(function, name, functions))
    return read


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_declares_every_params_section_its_code_reads(name):
    stage = STAGES[name]
    declared = {entry.split(".")[0] for entry in stage.get("params", []) if isinstance(entry, str)}
    undeclared = params_read(stage["cmd"].split()[1]) - declared
    assert not undeclared, f"stage {name} reads params {sorted(undeclared)} that dvc.yaml does not declare"


def test_params_are_followed_through_calls():
    tree = ast.parse("def run(params):\n    helper(1, params)\n    params['a']\n"
                     "def helper(x, p):\n    p.get('b')\n    other(cfg=p)\n"
                     "def other(cfg):\n    cfg['c']\n")
    functions = {f.name: [f] for f in tree.body}
    assert sections_read(functions["run"][0], "params") == {"a"}
    assert [(f.name, arg) for f, arg in handed_on(functions["run"][0], "params", functions)] == [("helper", "p")]
    assert [(f.name, arg) for f, arg in handed_on(functions["helper"][0], "p", functions)] == [("other", "cfg")]


# ---- the raw data: a stage whose MLflow run records the data version depends on it ----

# `mlops.runs` tags every stage run with the raw data's md5 (data.dvc) and `mlops.datasets` logs
# it; `core.resume` keeps it in a checkpoint's settings.
READS_DATA_VERSION = {"mlops/runs.py", "mlops/datasets.py", "core/resume.py"}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_that_records_the_data_version_depends_on_the_data(name):
    stage = STAGES[name]
    modules = closure(command_roots(stage["cmd"].split()[1]))
    if modules & READS_DATA_VERSION:
        assert "reports/data_summary.json" in stage["deps"], \
            f"stage {name} records the data version but does not depend on validate's record of it"


def test_the_package_stage_packages_every_trained_network_and_promote_weighs_every_package():
    from nucseg.mlops.networks import TRAINED_NETWORKS, package_record, thresholds_table

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    package = stages["package"]
    assert package["foreach"] == list(TRAINED_NETWORKS)
    assert "models/${item}" in package["do"]["deps"]
    outs = package["do"]["outs"]
    for name, trained in TRAINED_NETWORKS.items():
        assert trained.directory in stages[trained.stage]["outs"], f"{trained.stage} does not make {trained.directory}"
        assert str(package_record("${item}")) in outs and str(thresholds_table("${item}")) in outs
        assert str(package_record(name)) in stages["promote"]["deps"], f"promote does not depend on {name}'s package"
