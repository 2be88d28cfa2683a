"""Browser tests: Playwright (its driver ships in the pip wheel) driving Debian's
``chromium`` (``make browser`` installs it; ``playwright install`` downloads nothing
here) against a real Airflow UI.

* ``browser``: one headless chromium per test module (``--no-sandbox`` as root); a
  missing browser FAILS the tests, it does not skip them. Not per session: Playwright's
  sync API keeps an event loop running in the main thread while it is open, and a later
  test's ``asyncio.run()`` would find it;
* ``ui_world``: a closedloop home with a champion and verdicts, served by a started
  ``LocalAirflow`` (its API server loads the closedloop plugin);
* ``log_in``: logs in through the real form at ``/auth/login`` of a started
  ``LocalAirflow``, returns the browser state it left; ``storage_state``: that, once,
  for ``ui_world``; ``page``: a fresh context with that state;
* ``screenshot``: PNGs under ``$CLOSEDLOOP_TEST_ARTIFACTS`` (default ``test-artifacts/``
  at the repository root, git-ignored).
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from ui_world import AS_OF, FIRST, load_history, record_verdicts, running_airflow

from closedloop.core.settings import PROJECT_ROOT, load_settings

CHROMIUM = Path(os.environ.get("CLOSEDLOOP_CHROMIUM") or "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("CLOSEDLOOP_TEST_ARTIFACTS") or PROJECT_ROOT / "test-artifacts")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"no browser at {CHROMIUM}: `make browser` installs Debian's chromium "
            "(or set CLOSEDLOOP_CHROMIUM to a Chromium/Chrome executable)",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    args = ["--disable-dev-shm-usage", "--disable-gpu"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # chromium refuses to run sandboxed as root
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=args
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def ui_world(tmp_path_factory):
    """(settings, airflow): a first champion trained in process, Airflow up."""
    from closedloop.core import training_pipeline as tp

    home = tmp_path_factory.mktemp("browser") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_HOME", str(home))
        settings = load_settings()
        with running_airflow(settings) as airflow:
            load_history(settings)  # while Airflow comes up
            record_verdicts(settings)
            start = datetime.combine(FIRST, datetime.min.time(), UTC)
            outcome = tp.run_in_process(
                settings,
                start,
                AS_OF,
                "browser/initial",
                reason="test",
                trials=2,
                validation_days=3,
                holdout_days=3,
            )
            assert outcome["action"] == "promoted", outcome
            airflow.wait_ready()
            yield airflow.public_settings(), airflow


@pytest.fixture(scope="module")
def log_in(browser, tmp_path_factory):
    """``log_in(airflow, screenshot=None)``: log in as admin through Airflow's login form
    of a started ``LocalAirflow``; returns the path of the browser state (cookies) it
    left. ``screenshot(page, what)``, if given, is called on the form and after it."""

    def log_in(airflow, screenshot=None) -> Path:
        password = json.loads(airflow.password_file.read_text())["admin"]
        context = browser.new_context(
            base_url=airflow.base_url, viewport={"width": 1400, "height": 1000}
        )
        try:
            page = context.new_page()
            page.goto("/auth/login")
            page.locator("input[name=username]").fill("admin")
            page.locator("input[name=password]").fill(password)
            if screenshot:
                screenshot(page, "login-form")
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(re.compile(r"^(?!.*/auth/login).*$"), timeout=60_000)
            assert any(c["name"] == "_token" for c in context.cookies()), "login set no cookie"
            if screenshot:
                page.get_by_role("link", name="Dags").first.wait_for(timeout=60_000)
                screenshot(page, "logged-in")
            path = tmp_path_factory.mktemp("browser-state") / "state.json"
            context.storage_state(path=str(path))
            return path
        finally:
            context.close()

    return log_in


@pytest.fixture(scope="module")
def storage_state(ui_world, log_in) -> Path:
    """Logged in as admin through Airflow's login form once; the cookies it set."""
    _, airflow = ui_world
    return log_in(airflow)


@pytest.fixture
def page(browser, ui_world, storage_state):
    _, airflow = ui_world
    context = browser.new_context(
        base_url=airflow.base_url,
        storage_state=str(storage_state),
        viewport={"width": 1400, "height": 1000},
    )
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


@pytest.fixture
def screenshot(request):
    """``screenshot(page, "what")`` saves ``<test name>-<what>.png`` and returns its path."""

    def take(page, what: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{request.node.name}-{what}")
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
