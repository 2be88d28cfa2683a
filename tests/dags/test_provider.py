"""closedloop registers itself as an Airflow provider through its entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_airflow_providers_list_shows_closedloop():
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    out = subprocess.run(
        [airflow, "providers", "list", "--output", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    providers = {p["package_name"]: p for p in json.loads(out.stdout)}
    assert "closedloop" in providers, sorted(providers)


def test_connection_type_is_registered():
    from airflow.providers_manager import ProvidersManager

    hooks = ProvidersManager().hooks
    assert "closedloop_feast" in hooks
    assert hooks["closedloop_feast"].hook_class_name == "closedloop.hooks.feast.FeastHook"
