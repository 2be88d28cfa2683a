"""closedloop.core holds the decisions and must run without Airflow installed."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from closedloop.core.settings import PACKAGE_DIR

CORE_MODULES = sorted(
    f"closedloop.core.{p.stem}" for p in (PACKAGE_DIR / "core").glob("*.py") if p.stem != "__init__"
)


def test_core_source_never_imports_airflow():
    offenders = []
    for path in sorted((PACKAGE_DIR / "core").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "airflow"]
    assert offenders == []


def test_importing_every_core_module_loads_no_airflow():
    probe = (
        "import importlib, json, sys\n"
        f"for m in {CORE_MODULES!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] == 'airflow')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert len(CORE_MODULES) >= 8
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


#: what core may not import: every other part of closedloop
ABOVE_CORE = ("hooks", "operators", "serving", "usecases", "factory", "assets", "provider",
              "ui", "cli", "explain_cli", "evidence_cli", "shadow_cli", "users_cli", "platform",
              "demo")  # fmt: skip
#: the library: what a user's DAGs and services import
LIBRARY = ["core", "hooks", "operators", "serving", "usecases", "ui", "factory.py", "assets.py",
           "provider.py", "notifiers.py"]  # fmt: skip


def _imports(path) -> list[str]:
    """Every module ``path`` imports, at any depth (imports inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
    return found


def _sources(*names: str) -> list:
    paths = []
    for name in names:
        target = PACKAGE_DIR / name
        paths += sorted(target.rglob("*.py")) if target.is_dir() else [target]
    return paths


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        pytest.param(LIBRARY, ("closedloop.platform", "closedloop.demo"), id="library"),
        pytest.param(["platform"], ("closedloop.demo",), id="platform"),
        pytest.param(["core"], tuple(f"closedloop.{m}" for m in ABOVE_CORE), id="core"),
    ],
)
def test_a_layer_never_imports_the_layers_above_it(layer, forbidden):
    """The library runs inside a user's Airflow: it cannot depend on how closedloop runs
    its own services (the platform) or on the demo; the platform serves any use case, so
    it cannot depend on the demo either."""
    paths = _sources(*layer)
    assert len(paths) >= 7
    offenders = [
        f"{path.relative_to(PACKAGE_DIR)}: {module}"
        for path in paths
        for module in _imports(path)
        if module.startswith(forbidden)
    ]
    assert offenders == []
