"""Airflow execs every .py file in the plugins folder as a top-level module named after
the file; the closedloop package must be excluded, or e.g. hooks/feast.py would replace
the real ``feast`` module in ``sys.modules``."""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import json, sys
from airflow import plugins_manager
plugins_manager.ensure_plugins_loaded()
import feast
print(json.dumps({
    "feast": getattr(feast, "__file__", ""),
    "top_level": sorted(
        m for m in ("features", "validation", "offline", "settings") if m in sys.modules
    ),
    "errors": {k: v for k, v in plugins_manager.get_import_errors().items()}
        if hasattr(plugins_manager, "get_import_errors") else {},
}))
"""


def test_plugin_loading_does_not_shadow_libraries():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert "site-packages/feast" in probe["feast"]
    assert probe["top_level"] == []
    assert probe["errors"] == {}
