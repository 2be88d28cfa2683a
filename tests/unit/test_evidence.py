"""The evidence report's rules (closedloop.core.evidence_rules, evidence_steps) on facts
built by hand — a whole loop, then the same loop with one piece cut out — and the
collector and the renderers on small stores."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from evidence_cuts import without_monitoring

from closedloop.core import tags as tag
from closedloop.core.evidence import (
    CI_FILES,
    DagRun,
    Facts,
    MlflowRun,
    ModelVersion,
    collect,
    judge,
    read_dag_runs,
)
from closedloop.core.evidence_report import html, markdown
from closedloop.core.ledger import LedgerEntry
from closedloop.core.monitoring import Verdict
from closedloop.core.settings import PROJECT_ROOT, load_settings

FEATURE_TASKS = (
    "extract",
    "validate",
    "clean",
    "engineer",
    "load_offline_store",
    "feast_apply",
    "materialize",
)
TRAINING_TASKS = ("build_training_set", "validate_training_set", "train", "register", "gate")
ALL_PRINCIPLES = {f"P{i}" for i in range(1, 10)}


def _ok(*tasks: str) -> dict[str, str]:
    return dict.fromkeys(tasks, "success")


def _file(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    return path


@pytest.fixture
def facts(tmp_path) -> Facts:
    """A loop as the stores would hold it: two monitored days, the second asking to
    retrain, the retraining registered v2 and the gate promoted it."""
    settings = load_settings(home=tmp_path / "home", usecase_name="hotel_bookings")
    dags = dict(settings.usecase.dag_ids)
    model = settings.model_name
    home = settings.home
    reports = [_file(settings.reports_dir / d / "drift.html") for d in ("2026-02-01", "2026-02-02")]
    sets = [_file(settings.training_dir / k / "training_set.parquet") for k in ("i", "r")]
    retrain_id = f"retrain__{model}__2026-02-02"

    def run(stage, run_id, tasks, **kw):
        kw = {"run_type": "manual", "triggered_by": "REST_API", "user": "admin", "conf": {}, **kw}
        return DagRun(dags[stage], run_id, "success", tasks=tasks, **kw)

    def lineage(key, digest, path):
        return {
            tag.DAG_RUN_ID: f"{dags['training']}/{key}",
            tag.DATA_DIGEST: digest,
            tag.GIT_COMMIT: "abc123",
            tag.CONFIG_DIGEST: "cfg",
            tag.CONFIG: "{}",
            tag.PREFIX + "training_set_uri": str(path),
            tag.PREFIX + "feature_service": "hotel_cancellation_v1",
        }

    def verdict(day, retrain, report):
        return Verdict(
            model,
            day,
            0.5 if retrain else 0.0,
            [],
            None,
            None,
            None,
            0,
            retrain,
            ["r"],
            report=str(report),
        )

    def moved(version, run_id):
        return LedgerEntry(
            model,
            "champion",
            version,
            None,
            "promote",
            "blessed",
            {},
            dags["training"],
            run_id,
            datetime.now(UTC),
        )

    return Facts(
        settings,
        dags,
        dag_runs=[
            run("features", "loop__2026-02-01", _ok(*FEATURE_TASKS)),
            run("training", "initial__x", _ok(*TRAINING_TASKS), conf={"reason": "initial"}),
            run("batch_inference", "loop__2026-02-01", _ok("score")),
            run("monitoring", "loop__2026-02-01", _ok("drift", "performance", "decide")),
            run(
                "monitoring",
                "loop__2026-02-02",
                _ok("drift", "performance", "decide", "trigger_training"),
            ),
            run(
                "training",
                retrain_id,
                _ok(*TRAINING_TASKS),
                run_type="operator_triggered",
                triggered_by="OPERATOR",
                conf={"reason": "drift"},
            ),
        ],
        training_runs=[
            MlflowRun("r1", "1", lineage("initial__x", "d1", sets[0]), {"roc_auc": 0.8}),
            MlflowRun("r2", "1", lineage(retrain_id, "d2", sets[1]), {"roc_auc": 0.81}),
        ],
        monitoring_runs=[MlflowRun(f"m{i}", "2", {tag.MONITORING_DAY: "d"}) for i in (1, 2)],
        versions=[
            ModelVersion("1", "r1", {tag.GATE: "blessed"}, ("previous",)),
            ModelVersion("2", "r2", {tag.GATE: "blessed, beats champion"}, ("champion",)),
        ],
        verdicts=[
            verdict("2026-02-01", False, reports[0]),
            verdict("2026-02-02", True, reports[1]),
        ],
        ledger=[moved("1", "initial__x"), moved("2", retrain_id)],
        files={
            "ci": [PROJECT_ROOT / f for f in CI_FILES],
            "drift_reports": reports,
            "data_docs": [_file(home / "gx" / "index.html")],
            "gx_batch": [_file(home / "gx" / "batch.html")],
            "gx_training_set": [_file(home / "gx" / "set.html")],
            "training_sets": sets,
            "predictions": [_file(home / "predictions" / "2026-02-01.parquet")],
            "feast_registry": [_file(home / "feast" / "registry.db")],
        },
        commits={"abc123": True},
        evidently={_file(home / "evidently" / "p" / "snapshots" / "s.json"): ("p", "s")},
    )


def _red(findings: dict, kind: str = "principles") -> set[str]:
    return {f.id for f in findings[kind] if not f.exercised}


def test_a_whole_loop_exercises_every_principle_but_collaboration(facts):
    findings = judge(facts)
    assert _red(findings) == {"P5"}  # one person (admin) started every run, none approved
    assert _red(findings, "components") == set()
    assert _red(findings, "steps") == set()
    assert [f.id for f in findings["principles"]] == [f"P{i}" for i in range(1, 10)]
    assert all(f.why for group in findings.values() for f in group)
    p9 = next(f for f in findings["principles"] if f.id == "P9")
    assert "registered v2 (promoted)" in p9.why
    kinds = {link.kind for link in p9.links}
    assert {"dag_run", "model_version", "file"} <= kinds


def test_without_monitoring_there_is_no_continuous_monitoring_and_no_feedback_loop(facts):
    monitoring = facts.stages["monitoring"]
    cut = without_monitoring(facts, monitoring)
    findings = judge(cut)
    assert _red(findings) == {"P5", "P8", "P9"}
    assert _red(findings, "components") == {"C9"}
    assert _red(findings, "steps") == {"monitor", "trigger"}
    p8 = next(f for f in findings["principles"] if f.id == "P8")
    assert p8.why.startswith("no monitoring") and p8.links == []


def test_a_retrain_verdict_whose_training_registered_nothing_closes_no_loop(facts):
    cut = dataclasses.replace(facts, versions=facts.versions[:1])
    findings = judge(cut)
    assert {"P6", "P9"} <= _red(findings)
    p9 = next(f for f in findings["principles"] if f.id == "P9")
    assert "1 verdict(s) asked to retrain" in p9.why


def test_collaboration_needs_a_named_approval_or_a_second_person(facts):
    approved = [
        dataclasses.replace(v, tags={**v.tags, tag.APPROVAL: "approved by alice"})
        for v in facts.versions
    ]
    assert "P5" not in _red(judge(dataclasses.replace(facts, versions=approved)))
    second = dataclasses.replace(facts.dag_runs[0], run_id="loop__b", user="bob")
    assert "P5" not in _red(judge(dataclasses.replace(facts, dag_runs=[*facts.dag_runs, second])))
    # a run started by a DAG (the monitoring's trigger) is no person
    by_dag = dataclasses.replace(second, user="carol", triggered_by="OPERATOR")
    assert "P5" in _red(judge(dataclasses.replace(facts, dag_runs=[*facts.dag_runs, by_dag])))
    # the ledger names who rolled back: a second person; a move by hand names nobody
    moved = LedgerEntry("m", "champion", "1", "2", "rollback", "", {}, None, None,
                        datetime(2026, 2, 3, tzinfo=UTC), "user:dana")  # fmt: skip
    findings = judge(dataclasses.replace(facts, ledger=[*facts.ledger, moved]))
    assert "P5" not in _red(findings)
    assert "dana: rollback v1" in next(f for f in findings["principles"] if f.id == "P5").why
    by_hand = dataclasses.replace(moved, action="out_of_band", actor=None)
    assert "P5" in _red(judge(dataclasses.replace(facts, ledger=[*facts.ledger, by_hand])))


def test_an_unknown_commit_or_missing_lineage_turns_the_code_and_lineage_principles_red(facts):
    findings = judge(dataclasses.replace(facts, commits={"abc123": False}))
    assert {"P1"} <= _red(findings) and "C2" in _red(findings, "components")
    bare = [dataclasses.replace(r, tags={tag.DATA_DIGEST: "d"}) for r in facts.training_runs]
    findings = judge(dataclasses.replace(facts, training_runs=bare))
    assert {"P3", "P7"} <= _red(findings)


def test_an_empty_home_exercised_nothing_and_is_left_as_it_was(tmp_path):
    settings = load_settings(home=tmp_path / "home", usecase_name="hotel_bookings")
    facts = collect(settings)
    findings = judge(facts)
    assert _red(findings) == ALL_PRINCIPLES
    assert _red(findings, "components") == {f"C{i}" for i in range(1, 10)}
    assert not any(f.exercised for f in findings["steps"])
    assert len(facts.problems) == 2  # no Airflow metadata DB, no MLflow store
    assert not (settings.home / "closedloop.db").exists()
    assert not settings.airflow_home.exists() and not settings.mlflow_dir.exists()


#: the columns of Airflow's tables the collector reads
METADATA_DB = [
    "CREATE TABLE dag_run (id INTEGER PRIMARY KEY, dag_id TEXT, run_id TEXT, state TEXT,"
    " run_type TEXT, triggered_by TEXT, triggering_user_name TEXT, conf TEXT)",
    "CREATE TABLE task_instance (dag_id TEXT, run_id TEXT, task_id TEXT, state TEXT)",
    "INSERT INTO dag_run VALUES (1, 'a', 'r1', 'success', 'manual', 'REST_API', 'admin',"
    """ '{"reason": "initial"}')""",
    "INSERT INTO dag_run VALUES (2, 'other', 'r2', 'failed', 'manual', 'UI', 'x', NULL)",
    "INSERT INTO task_instance VALUES ('a', 'r1', 't1', 'success'), ('a', 'r1', 't2', 'skipped')",
]


def test_dag_runs_and_their_tasks_are_read_from_the_metadata_db(tmp_path):
    url = f"sqlite:///{tmp_path / 'airflow.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in METADATA_DB:
            conn.execute(sa.text(statement))
    engine.dispose()
    [run] = read_dag_runs(url, ["a"])
    assert (run.run_id, run.user, run.conf) == ("r1", "admin", {"reason": "initial"})
    assert run.task_ok("t1") and not run.task_ok("t2") and not run.task_ok("t3")


def test_the_reports_escape_what_the_stores_hold(facts):
    hostile = "<script>alert(1)</script> | [x](y)"
    facts.dag_runs[0] = dataclasses.replace(facts.dag_runs[0], run_id=hostile)
    findings = judge(facts)
    page = html(facts, findings, "now")
    assert "<script>" not in page and "&lt;script&gt;" in page
    text = markdown(facts, findings, "now")
    assert "<script>alert(1)</script> \\| \\[x\\](y)" in text
    assert text.count("NOT exercised") == 1  # P5
    assert page.count('class="no"') == 1
    json.dumps([dataclasses.asdict(f) for f in findings["principles"]])


def test_the_command_writes_the_report_and_strict_fails_on_a_red_principle(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from closedloop.cli import main

    monkeypatch.setenv("CLOSEDLOOP_HOME", str(tmp_path / "home"))
    out = tmp_path / "report"
    done = CliRunner().invoke(main, ["evidence", "--usecase", "hotel_bookings", "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert "P1:NO" in done.output and str(out / "evidence.html") in done.output
    assert {p.name for p in out.iterdir()} == {"evidence.md", "evidence.html", "evidence.json"}
    strict = CliRunner().invoke(main, ["evidence", "--strict", "--out", str(out)])
    assert strict.exit_code == 1 and "principles not exercised: P1, P2" in strict.output
