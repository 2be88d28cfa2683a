"""A closedloop home with data, a champion and monitoring verdicts, served by a real
Airflow (``LocalAirflow``: API server with the closedloop plugin, scheduler, DAG
processor) on its own metadata DB — shared by tests/integration/test_ui_plugin.py and
tests/browser. Not a test module: imported by them (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from closedloop.core.feature_pipeline import backfill
from closedloop.core.monitoring import DecisionLog, Verdict
from closedloop.core.settings import Settings
from closedloop.platform.local_airflow import LocalAirflow
from closedloop.usecases.hotel.generator import write_batches

FIRST = date(2026, 1, 1)
DAYS = 20
ROWS_PER_DAY = 150
#: the end of the first training window: midnight after the loaded days
AS_OF = datetime.combine(FIRST + timedelta(days=DAYS), datetime.min.time(), UTC)
#: the monitored days recorded as verdicts (drift rising, live AUC falling)
VERDICT_DAYS = [FIRST + timedelta(days=DAYS - 3 + i) for i in range(3)]


def load_history(settings: Settings) -> None:
    write_batches(settings.landing_dir, FIRST, DAYS, rows_per_day=ROWS_PER_DAY)
    backfill(settings, FIRST, DAYS)


def record_verdicts(settings: Settings) -> list[Verdict]:
    """Three verdicts, the last with a drift report on disk and a retrain."""
    log = DecisionLog(settings.closedloop_db)
    verdicts = []
    try:
        for i, day in enumerate(VERDICT_DAYS):
            report = settings.reports_dir / day.isoformat() / "drift.html"
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(f"<html><body><h1>drift report {day}</h1></body></html>")
            verdict = Verdict(
                model=settings.model_name,
                day=day.isoformat(),
                drift_share=[0.1, 0.25, 0.6][i],
                drifted_columns=["lead_time"] if i == 2 else [],
                prediction_drift=False,
                live_auc=[0.81, 0.77, 0.62][i],
                reference_auc=0.8,
                labelled_rows=300,
                retrain=i == 2,
                reasons=["drift share 0.60 over the threshold"] if i == 2 else [],
                report=str(report),
                cause="drift" if i == 2 else None,
            )
            log.record(verdict)
            verdicts.append(verdict)
    finally:
        log.dispose()
    return verdicts


@contextmanager
def running_airflow(settings: Settings):
    """Airflow on ``settings``' own metadata DB (migrated in a subprocess: this process's
    Airflow configuration is the test session's), started, stopped at exit."""
    airflow = LocalAirflow(settings)
    env = airflow.environ()
    migrate = [str(Path(sys.executable).with_name("airflow")), "db", "migrate"]
    subprocess.run(migrate, env=env, check=True, capture_output=True, timeout=600)
    airflow.launch()
    try:
        yield airflow
    finally:
        airflow.stop()


def get(
    airflow: LocalAirflow,
    path: str,
    *,
    token: str | None = None,
    cookie: str | None = None,
) -> tuple[int, str, str]:
    """GET ``path`` of the API server: (status, content type, body)."""
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = f"_token={cookie}"
    request = urllib.request.Request(airflow.base_url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, answer.headers.get("content-type", ""), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type", ""), exc.read().decode()


def get_json(airflow: LocalAirflow, path: str) -> dict:
    status, _, body = get(airflow, path, token=airflow.token())
    assert status == 200, (path, status, body[:500])
    return json.loads(body)
