"""closedloop.core holds the decisions and must run without Airflow installed."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

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
