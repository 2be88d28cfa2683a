"""The closedloop view through a real Airflow API server: the plugin is loaded from its
entry point, every route refuses an anonymous caller while Airflow answers, and an
Airflow user (a bearer token, or the ``_token`` cookie the UI's login sets) sees the
champion, the ledger and the verdicts the test created — a first champion trained by
the training DAG under the real scheduler — and the run's outputs in the ``dag_run``
tab. Files are served from the served folders only.
"""

from __future__ import annotations

import http.client
import re
import time
from urllib.parse import quote, urlsplit

import pytest
from ui_world import AS_OF, get, get_json, load_history, record_verdicts, running_airflow

from closedloop.core import links
from closedloop.core.ledger import PromotionLedger
from closedloop.core.registry import CHAMPION, alias_version, client_for
from closedloop.core.settings import load_settings

pytestmark = pytest.mark.integration

USECASE = "hotel_bookings"
RUN_ID = f"initial__{AS_OF:%Y-%m-%d}"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Airflow up on a fresh home; the training DAG trained the first champion."""
    home = tmp_path_factory.mktemp("ui") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_HOME", str(home))
        settings = load_settings()
        with running_airflow(settings) as airflow:
            load_history(settings)  # while Airflow comes up
            verdicts = record_verdicts(settings)
            airflow.wait_ready()
            training = settings.usecase.dag_ids["training"]
            airflow.wait_for_dags([training])
            airflow.trigger(
                training, AS_OF, {"reason": "initial", "as_of": AS_OF.isoformat()}, run_id=RUN_ID
            )
            approvals = _wait_answering_approvals(airflow, training, RUN_ID)
            state = airflow.wait(training, RUN_ID, timeout=900)
            assert state == "success", airflow.task_states(training, RUN_ID)
            yield {
                "settings": airflow.public_settings(),
                "airflow": airflow,
                "verdicts": verdicts,
                "approvals": approvals,
            }


def _wait_answering_approvals(airflow, dag_id, run_id, timeout=900.0):
    """Wait for the run; a task awaiting a human's answer (if the DAG asks for one) is
    first seen in the view's pending approvals, then approved over the REST API."""
    seen = []
    deadline = time.monotonic() + timeout
    while airflow.run(dag_id, run_id)["state"] not in ("success", "failed"):
        waiting = [
            t for t, s in airflow.task_states(dag_id, run_id).items() if s == "awaiting_input"
        ]
        for task in waiting:
            _, _, page = get(
                airflow, f"{links.APP_PREFIX}/usecases/{USECASE}", token=airflow.token()
            )
            seen.append((task, f"/tasks/{task}/required_actions" in page))
            airflow._request(
                "PATCH",
                f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task}/-1/hitlDetails",
                {"chosen_options": ["Approve"]},
                ok=(200, 409),
            )
        airflow.check_alive()
        assert time.monotonic() < deadline, f"{dag_id} {run_id} did not finish"
        time.sleep(1)
    return seen


def _routes(settings):
    usecase_dag = settings.usecase.dag_ids["training"]
    return [
        f"{links.APP_PREFIX}/",
        f"{links.APP_PREFIX}/usecases/{USECASE}",
        f"{links.APP_PREFIX}/runs/{usecase_dag}/{quote(RUN_ID, safe='')}",
        f"{links.APP_PREFIX}/files/{USECASE}/reports/{_report_day(settings)}/drift.html",
        f"{links.APP_PREFIX}/explain/x?usecase={USECASE}",
        f"{links.APP_PREFIX}/explain?usecase={USECASE}&prediction_id=x",
    ]


def _report_day(settings):
    return settings.reports_dir.iterdir().__next__().name


def test_airflow_lists_the_plugin_with_its_app_and_views(world):
    plugins = get_json(world["airflow"], "/api/v2/plugins")["plugins"]
    [plugin] = [p for p in plugins if p["name"] == "closedloop"]
    assert plugin["fastapi_apps"][0]["url_prefix"] == links.APP_PREFIX
    views = {v["destination"]: v for v in plugin["external_views"]}
    assert views["nav"]["url_route"] == "closedloop"
    assert views["dag_run"]["href"] == f"{links.APP_PREFIX}/runs/{{DAG_ID}}/{{RUN_ID}}"
    assert "closedloop.ui" in plugin["source"]
    errors = get_json(world["airflow"], "/api/v2/plugins/importErrors")["import_errors"]
    assert errors == []  # e.g. not "Plugin 'closedloop' already registered"


def test_every_route_refuses_an_anonymous_caller(world):
    airflow = world["airflow"]
    status, _, _ = get(airflow, "/api/v2/monitor/health")
    assert status == 200  # Airflow answers ...
    for route in _routes(world["settings"]):
        status, _, body = get(airflow, route)
        assert status in (401, 403), (route, status, body[:300])  # ... the view does not
        status, _, _ = get(airflow, route, token="not-a-jwt")
        assert status in (401, 403), route


def test_an_airflow_user_sees_champion_ledger_and_verdicts(world):
    settings, airflow = world["settings"], world["airflow"]
    champion = alias_version(client_for(settings), settings.model_name, CHAMPION)
    assert champion == "1"
    ledger = PromotionLedger(settings.closedloop_db).history(settings.model_name)
    assert [(e.action, e.version, e.run_id) for e in ledger] == [("promote", "1", RUN_ID)]
    for credential in ({"token": airflow.token()}, {"cookie": airflow.token()}):
        status, kind, page = get(airflow, f"{links.APP_PREFIX}/usecases/{USECASE}", **credential)
        assert status == 200 and kind.startswith("text/html"), (status, page[:500])
        [row] = re.findall(r'<tr class="alias-champion">(.*?)</tr>', page, re.S)
        assert ">v1<" in row
        assert links.mlflow_model_version(settings, settings.model_name, "1") in row
        assert 'id="ledger"' in page and RUN_ID in page and "promote" in page
        assert "<svg" in page and 'class="drift-share"' in page and 'class="live-auc"' in page
        for verdict in world["verdicts"]:
            assert f"<td>{verdict.day}</td>" in page
        served = links.file_url(settings, world["verdicts"][-1].report)
        assert served in page
        assert "Could not read" not in page
        for dag_id in settings.usecase.dag_ids.values():
            assert f'href="{settings.airflow_public_url}/dags/{dag_id}"' in page
    status, _, index = get(airflow, f"{links.APP_PREFIX}/", token=airflow.token())
    assert status == 200 and f"{links.APP_PREFIX}/usecases/{USECASE}" in index
    assert f"{links.APP_PREFIX}/usecases/flight_delays" in index
    status, _, _ = get(airflow, f"{links.APP_PREFIX}/usecases/nope", token=airflow.token())
    assert status == 404


def test_approvals_the_run_waited_for_were_listed(world):
    assert all(listed for _, listed in world["approvals"]), world["approvals"]


def test_the_dag_run_tab_lists_the_runs_outputs_with_their_links(world):
    settings, airflow = world["settings"], world["airflow"]
    training = settings.usecase.dag_ids["training"]
    href = f"{links.APP_PREFIX}/runs/{{DAG_ID}}/{{RUN_ID}}"
    path = href.replace("{DAG_ID}", training).replace("{RUN_ID}", quote(RUN_ID, safe=""))
    status, _, page = get(airflow, path, token=airflow.token())
    assert status == 200, page[:500]
    assert f'<span id="run">{RUN_ID}</span>' in page
    tasks = airflow.task_states(training, RUN_ID)
    for task in tasks:
        assert f'id="task-{task}"' in page
    client = client_for(settings)
    version = client.get_model_version(settings.model_name, "1")
    run = client.get_run(version.run_id)
    assert links.mlflow_run(settings, run.info.experiment_id, version.run_id) in page
    assert links.mlflow_model_version(settings, settings.model_name, "1") in page
    assert links.airflow_dag_run(settings, training, RUN_ID) in page
    assert "promoted" in page  # the gate's outcome, rendered
    status, _, _ = get(airflow, f"{links.APP_PREFIX}/runs/{training}/nope", token=airflow.token())
    assert status == 404
    status, _, _ = get(airflow, f"{links.APP_PREFIX}/runs/other_dag/x", token=airflow.token())
    assert status == 404


def _raw_get(airflow, raw_path, token):
    """A GET whose path is sent as is (urllib would not normalise it, but be explicit)."""
    parts = urlsplit(airflow.base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("GET", raw_path, headers={"Authorization": f"Bearer {token}"})
        answer = conn.getresponse()
        return answer.status, answer.getheader("content-type", ""), answer.read().decode()
    finally:
        conn.close()


def test_files_are_served_from_the_served_folders_only(world):
    settings, airflow = world["settings"], world["airflow"]
    token = airflow.token()
    report = world["verdicts"][-1].report
    url = urlsplit(links.file_url(settings, report))
    status, kind, body = _raw_get(airflow, url.path, token)
    assert status == 200 and kind.startswith("text/html") and "drift report" in body
    prefix = f"{links.FILES_PREFIX}/{USECASE}"
    day = _report_day(settings)
    outside = [
        f"{prefix}/reports/../../../../../../etc/passwd",
        f"{prefix}/reports/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        f"{prefix}/reports/%2Fetc%2Fpasswd",
        f"{prefix}/reports/{day}/..%2F..%2F..%2Fclosedloop.db",  # exists, not served
        f"{prefix}/landing/2026-01-01.csv",  # no such area
        f"{links.FILES_PREFIX}/nope/reports/{day}/drift.html",  # no such use case
    ]
    assert (settings.home / "closedloop.db").is_file()
    for path in outside:
        status, _, body = _raw_get(airflow, path, token)
        assert status == 404, (path, status, body[:200])


def test_the_use_case_page_explains_a_prediction_by_its_id(world):
    """The page's form goes to the explanation of a logged prediction; an unknown id is
    a 404 naming it."""
    from datetime import timedelta

    from closedloop.core.batch_inference import score_interval
    from closedloop.core.prediction_log import PredictionLog

    settings, airflow = world["settings"], world["airflow"]
    token = airflow.token()
    _, _, page = get(airflow, f"{links.APP_PREFIX}/usecases/{USECASE}", token=token)
    assert f'<form id="explain" method="get" action="{links.APP_PREFIX}/explain">' in page
    day = AS_OF - timedelta(days=1)
    score_interval(settings, day, AS_OF)
    record = PredictionLog(settings.prediction_log_dir).read(day, AS_OF).iloc[0]
    form = f"{links.APP_PREFIX}/explain?usecase={USECASE}&prediction_id="
    status, _, page = get(airflow, form + quote(record["prediction_id"], safe=""), token=token)
    assert status == 200, page[:500]
    assert f'<span id="prediction">{record["prediction_id"]}</span>' in page
    version = client_for(settings).get_model_version(settings.model_name, "1")
    training = settings.usecase.dag_ids["training"]
    assert version.run_id in page and RUN_ID in page
    assert links.airflow_dag_run(settings, training, RUN_ID) in page
    status, _, body = get(airflow, form + "no-such-id", token=token)
    assert status == 404 and "no-such-id" in body


def test_runs_triggered_without_an_id_within_a_second_are_distinct(world):
    """``LocalAirflow.trigger`` backdates ``run_after`` so the scheduler finds the run due
    at once; Airflow names a run triggered without an id after its ``run_after``, so
    runs triggered within the same second must still get distinct ids (whole seconds
    collided: a 409 'Unique constraint violation' in CI). The DAG stays paused; the runs
    are deleted after."""
    from datetime import timedelta

    settings, airflow = world["settings"], world["airflow"]
    dag_id = settings.usecase.dag_ids["features"]
    airflow.set_paused(dag_id, True)
    first = AS_OF + timedelta(days=3650)
    runs = [airflow.trigger(dag_id, first + timedelta(days=i)) for i in range(3)]
    try:
        assert len(set(runs)) == 3, runs
        listed = {r["dag_run_id"] for r in airflow.runs(dag_id)}
        assert set(runs) <= listed
    finally:
        for run in runs:
            airflow._request("DELETE", f"/api/v2/dags/{dag_id}/dagRuns/{run}", ok=(204, 404))
