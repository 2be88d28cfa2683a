"""The URLs of the loop's evidence (closedloop.core.links) and the extra-link buttons
that carry them (closedloop.operators.links)."""

from __future__ import annotations

import pytest

from closedloop.core import links
from closedloop.core.settings import load_settings


@pytest.fixture
def settings(tmp_path):
    stores = {
        "airflow_public_url": "https://airflow.example.org/",
        "mlflow_public_url": "https://mlflow.example.org",
        "evidently_public_url": "https://evidently.example.org",
    }
    return load_settings(home=tmp_path / "home", stores=stores)


def test_pages_follow_the_public_urls_of_the_settings(settings):
    assert links.mlflow_run(settings, "3", "abc") == (
        "https://mlflow.example.org/#/experiments/3/runs/abc"
    )
    assert links.mlflow_model_version(settings, "hotel cancellation", "7") == (
        "https://mlflow.example.org/#/models/hotel%20cancellation/versions/7"
    )
    assert links.evidently_report(settings, "p1", "s2") == (
        "https://evidently.example.org/projects/p1/reports/s2"
    )
    # a run id holds ':' and '+': one path segment, quoted
    assert links.airflow_task(settings, "d", "manual__2026-01-01T00:00:00+00:00", "t") == (
        "https://airflow.example.org/dags/d/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00/tasks/t"
    )


def test_the_embedded_profile_links_to_where_closedloop_up_serves(tmp_path):
    settings = load_settings(home=tmp_path / "home")
    assert settings.mlflow_tracking_uri.startswith("sqlite:")
    assert settings.mlflow_public_url == "http://127.0.0.1:5000"
    assert settings.evidently_public_url == "http://127.0.0.1:8000"
    production = load_settings(
        home=tmp_path / "p",
        profile="production",
        stores={
            "postgres_url": "postgresql://u@db:5432",
            "redis_url": "redis://cache:6379/0",
            "mlflow_tracking_uri": "http://mlflow:5000",
        },
    )
    assert production.mlflow_public_url == "http://mlflow:5000"


def test_a_served_file_round_trips_and_nothing_outside_is_reachable(settings):
    report = settings.quarantine_dir / "2026-01-01" / "report.json"
    report.parent.mkdir(parents=True)
    report.write_text("{}")
    url = links.file_url(settings, report)
    prefix = f"https://airflow.example.org{links.FILES_PREFIX}/{settings.usecase.name}/"
    assert url == prefix + "quarantine/2026-01-01/report.json"
    assert links.resolve_file(settings, "quarantine", "2026-01-01/report.json") == report.resolve()

    secret = settings.home / "airflow" / "passwords.json"
    secret.parent.mkdir(parents=True)
    secret.write_text("{}")
    with pytest.raises(ValueError, match="none of the served folders"):
        links.file_url(settings, secret)
    for area, relative in [
        ("quarantine", "../airflow/passwords.json"),
        ("quarantine", "../../home/airflow/passwords.json"),
        ("quarantine", str(secret)),  # an absolute path replaces the root when joined
        ("airflow", "passwords.json"),
        ("quarantine", "2026-01-01/missing.json"),
        ("quarantine", "2026-01-01"),  # a folder is not a file
    ]:
        with pytest.raises(LookupError):
            links.resolve_file(settings, area, relative)


def test_every_link_class_is_declared_in_the_provider_info():
    from closedloop.operators.links import LINKS
    from closedloop.provider import get_provider_info

    declared = get_provider_info()["extra-links"]
    assert declared == [f"{cls.__module__}.{cls.__qualname__}" for cls in LINKS]
    names = [cls.name for cls in LINKS]
    assert len(set(names)) == len(names) and all(names)


def test_a_link_is_what_the_task_set_and_empty_otherwise():
    from closedloop.operators.features import ValidateBatchOperator
    from closedloop.operators.links import DataDocsLink, QuarantineReportLink

    task = ValidateBatchOperator(task_id="validate")
    task.add_link(DataDocsLink.name, "https://x/docs.html")
    assert DataDocsLink().get_link(task, ti_key=None) == "https://x/docs.html"
    assert QuarantineReportLink().get_link(task, ti_key=None) == ""
    assert {link.name for link in task.operator_extra_links} >= {
        DataDocsLink.name,
        QuarantineReportLink.name,
        "closedloop view",
    }
