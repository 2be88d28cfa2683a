"""The loop in the UIs, in a real browser: a short loop run by the real Airflow scheduler
(LocalAirflow) leaves extra links on its task instances, and they lead to the real
MLflow UI, the real Evidently UI and the closedloop view's files; a pending promotion
is approved in Airflow's own Required Actions page and the ``champion`` alias moves.

The state, built once for the module (``loop``), with a gate that blesses every
candidate passing the floors and asks a person (``approval: required``):

* 30 days of history (January 2026) loaded in process, 31 January landed broken;
* ``hotel_bookings_features`` for 31 January: ``validate`` fails for good, quarantined;
* ``hotel_bookings_training`` as of 26 January, approved over REST: champion v1;
* batch inference for 26-28 January, monitoring for the 28th (an Evidently report);
* ``hotel_bookings_training`` as of 31 January: v2 waits for approval;
* ``mlflow ui`` and ``evidently ui`` on free ports of 127.0.0.1, which the links name
  (``CLOSEDLOOP_STORES__*_PUBLIC_URL`` set before Airflow starts).

``CLOSEDLOOP_UPDATE_SCREENSHOTS=1`` also writes the README's screenshots to
``docs/screenshots/``; the per-step ones always go to the test artifacts folder.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pytest
import yaml

from closedloop.core.settings import PACKAGE_USECASES, PROJECT_ROOT, Settings, load_settings
from closedloop.platform.console import ui_commands

pytestmark = pytest.mark.integration

USECASE = "hotel_bookings"
FEATURES = f"{USECASE}_features"
TRAINING = f"{USECASE}_training"
INFERENCE = f"{USECASE}_batch_inference"
MONITORING = f"{USECASE}_monitoring"
FIRST = date(2026, 1, 1)
HISTORY_DAYS = 30
ROWS_PER_DAY = 250
#: the first champion is trained as of this day's midnight; the days from it are scored
FIRST_AS_OF = FIRST + timedelta(days=25)
SCORED = [FIRST_AS_OF + timedelta(days=i) for i in range(3)]
MONITORED = SCORED[-1]
#: landed after the history, broken: the features run's validate blocks it
BROKEN = FIRST + timedelta(days=HISTORY_DAYS)
#: the second candidate, left waiting for approval
SECOND_AS_OF = BROKEN
BROKEN_CHECK = "expect_column_values_to_be_between"
SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"
UPDATE_SCREENSHOTS = os.environ.get("CLOSEDLOOP_UPDATE_SCREENSHOTS") == "1"


def midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


@dataclass
class Loop:
    settings: Settings  # as the task processes see it: links name the started UIs
    airflow: object  # LocalAirflow
    mlflow_url: str
    evidently_url: str
    first_run: str  # the training run approved over REST (champion v1)
    first_version: str
    second_run: str  # the training run waiting for approval
    second_version: str
    broken_run: str  # the features run whose validate blocked the broken day
    monitoring_run: str
    asked_at: float  # time.monotonic() when the second run's approve task asked


# -- building the state ------------------------------------------------------------------
def _declaration(folder: Path) -> Path:
    """The shipped hotel use case; its gate blesses whatever passes the floors and asks a
    person, who has a day to answer; two trials keep training short."""
    declaration = yaml.safe_load((PACKAGE_USECASES / f"{USECASE}.yaml").read_text())
    model = declaration["model"]
    model["gate"] = {
        **model.get("gate", {}),
        "approval": "required",
        "approval_timeout_hours": 24,
        "min_improvement": -1.0,
        "max_segment_regression": 1.0,
    }
    model["training"] = {**model.get("training", {}), "trials": 2}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{USECASE}.yaml"
    path.write_text(yaml.safe_dump(declaration, sort_keys=False))
    return path


def _break(path: Path) -> None:
    """Negative room rates in a landed batch: validation rejects it."""
    frame = pd.read_csv(path)
    frame.loc[frame.index[:3], "adr"] = -20.0
    path.write_text(frame.to_csv(index=False))


@contextmanager
def _server(name: str, command: list[str], logs: Path):
    """A UI server in its own process group (its output in ``<logs>/<name>.log``),
    killed with its children at exit."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_answering(name: str, proc: subprocess.Popen, url: str, logs: Path, timeout=120.0):
    """Wait until ``url`` answers 200; a server that exits or stays silent FAILS."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(
                f"the {name} UI exited with {proc.returncode}; see {logs / (name + '.log')}",
                pytrace=False,
            )
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                if answer.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the {name} UI did not answer {url} in {timeout:.0f}s", pytrace=False)
        time.sleep(0.5)


def _approve_over_rest(airflow, run_id: str) -> None:
    # An answer within the scheduler's next loop can overtake the executor's report that
    # the asking process ended (docs/pipelines.md, "Approval before promotion"): answer
    # as a person would, seconds later.
    time.sleep(5)
    airflow.answer(TRAINING, run_id, "approve", "Approve", {"reason": "first champion"})


def _registered(airflow, run_id: str) -> str:
    xcom = airflow._request(
        "GET",
        f"/api/v2/dags/{TRAINING}/dagRuns/{run_id}/taskInstances/register/xcomEntries/return_value",
    )
    return str(xcom["value"]).strip('"')


def _train(airflow, as_of: date, run_id: str) -> str:
    at = midnight(as_of)
    return airflow.trigger(TRAINING, at, {"as_of": at.isoformat(), "reason": "manual"}, run_id)


def _day_run(airflow, dag_id: str, day: date) -> str:
    """The run the daily schedule would start for ``day`` (its logical date: the end)."""
    return airflow.trigger(dag_id, midnight(day + timedelta(days=1)), run_id=f"ui__{day}")


def _succeeds(airflow, dag_id: str, run_id: str) -> None:
    state = airflow.wait(dag_id, run_id, timeout=600)
    assert state == "success", (dag_id, run_id, airflow.task_states(dag_id, run_id))


@contextmanager
def loop_world(root: Path):
    """Build the state (see the module) and start every server; yields a :class:`Loop`."""
    from closedloop.core.feature_pipeline import backfill
    from closedloop.core.registry import CHAMPION, alias_version, client_for
    from closedloop.platform.local_airflow import LocalAirflow, free_port
    from closedloop.usecases.hotel.generator import write_batches

    mlflow_port, evidently_port = free_port(), free_port()
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    evidently_url = f"http://127.0.0.1:{evidently_port}"
    with ExitStack() as stack:
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        mp.setenv("CLOSEDLOOP_HOME", str(root / "home"))
        mp.setenv("CLOSEDLOOP_USECASES_DIR", str(_declaration(root / "usecases").parent))
        mp.setenv("CLOSEDLOOP_USECASE_NAME", USECASE)
        # the links the task processes compute name the UIs started below
        mp.setenv("CLOSEDLOOP_STORES__MLFLOW_PUBLIC_URL", mlflow_url)
        mp.setenv("CLOSEDLOOP_STORES__EVIDENTLY_PUBLIC_URL", evidently_url)
        settings = load_settings()
        airflow = LocalAirflow(settings)
        # this process's Airflow is the test session's; the servers get a database of
        # their own, migrated by Airflow's CLI in their environment
        migrate = [str(Path(sys.executable).with_name("airflow")), "db", "migrate"]
        subprocess.run(migrate, env=airflow.environ(), check=True, capture_output=True, timeout=600)
        airflow.launch()
        stack.callback(airflow.stop)

        write_batches(settings.landing_dir, FIRST, HISTORY_DAYS + 1, rows_per_day=ROWS_PER_DAY)
        backfill(settings, FIRST, HISTORY_DAYS)  # while Airflow comes up
        _break(settings.landing_dir / f"{BROKEN}.csv")

        airflow.wait_ready()
        dags = [FEATURES, TRAINING, INFERENCE, MONITORING]
        airflow.wait_for_dags(dags)
        for dag_id in dags:
            airflow.set_paused(dag_id, False)

        first_run = _train(airflow, FIRST_AS_OF, f"ui__first__{FIRST_AS_OF}")
        broken_run = _day_run(airflow, FEATURES, BROKEN)
        airflow.wait_for_input(TRAINING, first_run, "approve")
        first_version = _registered(airflow, first_run)
        _approve_over_rest(airflow, first_run)
        _succeeds(airflow, TRAINING, first_run)
        assert alias_version(client_for(settings), settings.model_name, CHAMPION) == first_version

        scoring = [_day_run(airflow, INFERENCE, day) for day in SCORED]
        assert airflow.wait(FEATURES, broken_run) == "failed"
        assert airflow.task_states(FEATURES, broken_run)["validate"] == "failed"
        for run_id in scoring:
            _succeeds(airflow, INFERENCE, run_id)
        monitoring_run = _day_run(airflow, MONITORING, MONITORED)
        second_run = _train(airflow, SECOND_AS_OF, f"ui__second__{SECOND_AS_OF}")
        _succeeds(airflow, MONITORING, monitoring_run)

        logs = airflow.logs_dir
        commands = ui_commands(settings, mlflow_port, evidently_port)
        mlflow = stack.enter_context(_server("mlflow-ui", commands["mlflow"], logs))
        evidently = stack.enter_context(_server("evidently-ui", commands["evidently"], logs))
        airflow.wait_for_input(TRAINING, second_run, "approve")
        asked_at = time.monotonic()
        second_version = _registered(airflow, second_run)
        _wait_answering("mlflow-ui", mlflow, f"{mlflow_url}/health", logs)
        _wait_answering("evidently-ui", evidently, f"{evidently_url}/", logs)
        yield Loop(
            settings=airflow.public_settings(),
            airflow=airflow,
            mlflow_url=mlflow_url,
            evidently_url=evidently_url,
            first_run=first_run,
            first_version=first_version,
            second_run=second_run,
            second_version=second_version,
            broken_run=broken_run,
            monitoring_run=monitoring_run,
            asked_at=asked_at,
        )


@pytest.fixture(scope="module")
def loop(browser, tmp_path_factory):
    """The state (see the module); after ``browser``, so a missing browser fails first."""
    with loop_world(tmp_path_factory.mktemp("loop-ui")) as world:
        yield world


@pytest.fixture(scope="module")
def state(loop, log_in) -> Path:
    """The browser state of a login through Airflow's form (the harness's ``log_in``)."""
    return log_in(loop.airflow)


@pytest.fixture
def context(browser, loop, state):
    context = browser.new_context(
        base_url=loop.airflow.base_url,
        storage_state=str(state),
        viewport={"width": 1400, "height": 1000},
    )
    context.set_default_timeout(60_000)
    yield context
    context.close()


@pytest.fixture
def page(context):
    return context.new_page()


def readme_screenshot(page, name: str) -> None:
    """A screenshot of the README's, rewritten only when asked to."""
    if UPDATE_SCREENSHOTS:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def task_details(page, dag_id: str, run_id: str, task_id: str) -> None:
    """The task instance's Details tab, where Airflow 3.3 lists its extra links."""
    page.goto(f"/dags/{dag_id}/runs/{quote(run_id, safe='')}/tasks/{task_id}/details")
    page.get_by_role("heading", name="Extra Links").wait_for()


def text_of(page) -> str:
    return page.locator("body").inner_text()


def open_in_new_tab(context, link):
    """Click a link that opens a new tab (an extra link to another server); its page."""
    with context.expect_page() as opened:
        link.click()
    tab = opened.value
    tab.set_default_timeout(60_000)
    return tab


# -- the steps ---------------------------------------------------------------------------
def test_1_logs_in_through_airflows_form(loop, log_in, screenshot):
    log_in(loop.airflow, screenshot)


def test_2_train_links_to_its_mlflow_run(loop, context, page, screenshot):
    from closedloop.core.registry import client_for

    task_details(page, TRAINING, loop.first_run, "train")
    link = page.get_by_role("link", name="MLflow run", exact=True)
    link.wait_for()
    page.get_by_role("link", name="closedloop view").wait_for()
    href = link.get_attribute("href")
    assert href.startswith(f"{loop.mlflow_url}/#/experiments/"), href
    screenshot(page, "train-extra-links")
    readme_screenshot(page, "extra-link.png")

    mlflow = open_in_new_tab(context, link)
    run_id = href.rsplit("/", 1)[-1]
    run = client_for(loop.settings).get_run(run_id)
    assert run.info.run_name == f"{TRAINING}/{loop.first_run}"
    mlflow.get_by_text(run.info.run_name).first.wait_for()
    metric = mlflow.get_by_text("roc_auc", exact=True).first
    metric.wait_for()
    shown = text_of(mlflow)
    assert run_id in shown
    assert str(run.data.metrics["roc_auc"]) in shown
    metric.scroll_into_view_if_needed()
    screenshot(mlflow, "mlflow-run")


def test_3_drift_links_to_its_evidently_report(loop, context, page, screenshot):
    verdict = loop.airflow._request(
        "GET",
        f"/api/v2/dags/{MONITORING}/dagRuns/{loop.monitoring_run}/taskInstances/decide/"
        "xcomEntries/return_value",
    )["value"]
    task_details(page, MONITORING, loop.monitoring_run, "drift")
    link = page.get_by_role("link", name="Evidently report")
    link.wait_for()
    page.get_by_role("link", name="Drift report (HTML)").wait_for()
    assert link.get_attribute("href").startswith(f"{loop.evidently_url}/projects/")
    screenshot(page, "drift-extra-links")

    evidently = open_in_new_tab(context, link)
    evidently.get_by_text("columns that drifted").first.wait_for()  # the check's share
    shown = text_of(evidently)
    assert "lead_time: wasserstein drift score" in shown, shown[:2000]  # every column's
    # the verdict's drifted columns are the report's: Evidently draws each, and no other
    drawn = set(re.findall(r"Drift in column '([^']+)'", shown))
    assert drawn == set(verdict["drifted_columns"]), (drawn, verdict["drifted_columns"])
    screenshot(evidently, "evidently-report")


def test_4_blocked_validate_links_to_its_quarantine_report(loop, page, screenshot):
    assert loop.airflow.task_states(FEATURES, loop.broken_run)["validate"] == "failed"
    task_details(page, FEATURES, loop.broken_run, "validate")
    link = page.get_by_role("link", name="Quarantine report")
    link.wait_for()
    page.get_by_role("link", name="Data Docs").wait_for()
    screenshot(page, "validate-extra-links")

    link.click()  # same origin: the closedloop view's app serves it, in this tab
    page.wait_for_url(f"**/closedloop/files/{USECASE}/quarantine/{BROKEN}/report.json")
    page.get_by_text(BROKEN_CHECK).first.wait_for()
    shown = text_of(page)
    assert '"success": false' in shown
    assert "adr" in shown
    screenshot(page, "quarantine-report")


def test_5_closedloop_view_shows_champion_and_ledger(loop, page, screenshot):
    page.goto("/")
    entry = page.locator('a[href$="/plugin/closedloop"]').first
    entry.click()
    page.wait_for_url("**/plugin/closedloop")
    view = page.frame_locator('iframe[src*="/closedloop/"]')
    view.locator("a.usecase", has_text=USECASE).click()
    champion = view.locator("tr.alias-champion")
    champion.wait_for()
    assert f"v{loop.first_version}" in champion.inner_text()
    ledger = view.locator("#ledger").inner_text()
    assert "promote" in ledger and loop.first_run in ledger, ledger
    assert "approved by admin: first champion" in ledger, ledger
    assert "user:admin" in ledger, ledger  # who moved it, in the ledger's "by" column
    approvals = view.locator("#approvals").inner_text()
    assert loop.second_run in approvals, approvals
    assert f"v{loop.second_version} to champion?" in approvals, approvals
    assert str(MONITORED) in view.locator("#verdicts").inner_text()
    screenshot(page, "closedloop-view")
    readme_screenshot(page, "closedloop-view.png")


def test_6_approving_in_the_ui_moves_the_champion(loop, page, screenshot):
    from closedloop.core.ledger import PromotionLedger
    from closedloop.core.registry import CHAMPION, alias_version, client_for

    settings = loop.settings
    client = client_for(settings)
    assert alias_version(client, settings.model_name, CHAMPION) == loop.first_version
    # the closedloop view's "answer" opens the task's Required Actions page
    page.goto(f"/closedloop/usecases/{USECASE}")
    page.locator("#approvals a", has_text="answer").click()
    page.wait_for_url(f"**/dags/{TRAINING}/runs/{loop.second_run}/tasks/approve/required_actions")
    subject = f"Promote {settings.model_name} v{loop.second_version} to champion?"
    page.get_by_text(subject).first.wait_for()
    approve = page.get_by_role("button", name="Approve", exact=True)
    approve.wait_for()
    screenshot(page, "approval-waiting")
    readme_screenshot(page, "approval-waiting.png")

    # the form of the request's params: one field per param, named element_<param>
    page.locator("input[name=element_reason]").fill("approved in the browser")
    # answered as a person would: not within the scheduler's loop after the request
    # (docs/pipelines.md, "Approval before promotion")
    time.sleep(max(0.0, loop.asked_at + 5 - time.monotonic()))
    approve.click()
    page.get_by_text("response successful").first.wait_for()
    screenshot(page, "approval-answered")

    assert loop.airflow.wait(TRAINING, loop.second_run, timeout=300) == "success"
    assert loop.airflow.task_states(TRAINING, loop.second_run)["approve"] == "success"
    page.reload()
    page.get_by_text("Success", exact=True).first.wait_for()
    screenshot(page, "approved")
    assert alias_version(client, settings.model_name, CHAMPION) == loop.second_version
    ledger = PromotionLedger(settings.closedloop_db)
    try:
        entries = ledger.history(settings.model_name)
    finally:
        ledger.dispose()
    (entry,) = [e for e in entries if e.version == loop.second_version]
    assert entry.action == "promote" and entry.run_id == loop.second_run
    assert entry.reason.endswith("approved by admin: approved in the browser"), entry.reason
    assert entry.actor == "user:admin"
