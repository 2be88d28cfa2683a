"""The closedloop view's pieces without a server: the plugin's declaration, the links an
XCom names, the SVG chart. The view itself is tested through Airflow's API server in
tests/integration/test_ui_plugin.py and in a browser in tests/browser."""

from __future__ import annotations

import json
import subprocess
import sys

from closedloop.core import links
from closedloop.core.monitoring import Verdict
from closedloop.ui import ClosedLoopPlugin, render, state


def test_the_plugin_declares_a_nav_view_and_a_dag_run_tab():
    views = {v["destination"]: v for v in ClosedLoopPlugin.external_views}
    assert views["nav"]["href"] == f"{links.APP_PREFIX}/"
    assert views["nav"]["url_route"] == "closedloop"
    assert views["dag_run"]["href"] == f"{links.APP_PREFIX}/runs/{{DAG_ID}}/{{RUN_ID}}"


def test_loading_the_plugin_builds_no_app():
    """Schedulers and tasks load the plugin too: the app (and Airflow's security module)
    is built only when the API server asks for it."""
    probe = (
        "import json, sys, closedloop.ui\n"
        "print(json.dumps([m for m in ('closedloop.ui.app', 'fastapi',"
        " 'airflow.api_fastapi.core_api.security') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_an_xcom_links_served_files_runs_and_versions(home):
    report = home.reports_dir / "2026-01-20" / "drift.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html></html>")
    outside = home.home / "secret.txt"
    outside.write_text("no")
    value = {
        "report": str(report),
        "other": str(outside),
        "missing": str(home.reports_dir / "nope.html"),
        "evidently_project": "p1",
        "evidently_run": "r1",
        "retrain": True,
        "trigger_run_id": "retrain__x__2026-01-20",
    }
    found = dict(state.derived_links(home, value))
    assert found["report"] == links.file_url(home, report)
    assert "other" not in found and "missing" not in found
    assert found["Evidently report"] == links.evidently_report(home, "p1", "r1")
    training = home.usecase.dag_ids["training"]
    assert found["triggered training run"] == links.airflow_dag_run(
        home, training, "retrain__x__2026-01-20"
    )
    assert "triggered training run" not in dict(
        state.derived_links(home, {**value, "retrain": False})
    )
    gate = dict(state.derived_links(home, {"version": "3", "action": "promoted"}))
    assert gate["model version 3"] == links.mlflow_model_version(home, home.model_name, "3")
    assert dict(state.derived_links(home, "4")) == {
        "model version 4": links.mlflow_model_version(home, home.model_name, "4")
    }


def _verdict(day: str, drift: float, auc: float | None) -> Verdict:
    return Verdict(
        model="m",
        day=day,
        drift_share=drift,
        drifted_columns=[],
        prediction_drift=None,
        live_auc=auc,
        reference_auc=None,
        labelled_rows=0,
        retrain=False,
        reasons=[],
    )


def test_the_chart_draws_both_series_and_escapes_labels():
    svg = str(render.chart([_verdict("<b>", 0.1, None), _verdict("2026-01-02", 0.5, 0.7)], 0.3))
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert 'class="drift-share"' in svg and 'class="live-auc"' in svg
    assert "<b>" not in svg and "&lt;b&gt;" in svg
    assert str(render.chart([], 0.3)) == ""


def test_pages_escape_what_the_stores_hold():
    page = render.page(
        "index.html",
        prefix=links.APP_PREFIX,
        usecases=[{"name": "<script>x</script>", "model": "m", "dags": {}}],
        folder="f",
    )
    assert "<script>" not in page and "&lt;script&gt;" in page
