"""The rules of the paper's components C1-C9 and of the loop's workflow steps, over
collected :class:`~closedloop.core.evidence.Facts` (see ``evidence_rules`` for the
principles and the helpers both share)."""

from __future__ import annotations

from closedloop.core import tags as tag
from closedloop.core.evidence import CI_FILES, Facts, Finding, Link
from closedloop.core.evidence_rules import (
    commit_link,
    dag_link,
    evidently_links,
    file_link,
    file_links,
    recorded_commits,
    run_link,
    training_chain,
    verdict_reports,
    version_link,
    with_task,
)


def _runs(f: Facts, stage: str, *tasks: str) -> tuple[int, list[Link]]:
    runs = with_task(f, stage, *tasks)
    return len(runs), [dag_link(f, r) for r in runs]


def _finding(id_: str, title: str, ok: bool, yes: str, no: str, found: list[Link]) -> Finding:
    return Finding(id_, title, ok, yes if ok else no, found)


# -- components --------------------------------------------------------------------------


def c1(f: Facts) -> Finding:
    ci = file_links(f, "ci")
    promoted = [e for e in f.ledger if e.action == "promote" and e.dag_id]
    ok = len(ci) == len(CI_FILES) and bool(promoted)
    found = ci + [
        version_link(f, v) for v in f.versions if v.version in {e.version for e in promoted}
    ]
    return _finding(
        "C1",
        "CI/CD component",
        ok,
        f"CI: {', '.join(lk.label for lk in ci)}; delivery of models: "
        f"{len(promoted)} promotion(s) by the gate in a DAG run",
        f"CI files: {[lk.label for lk in ci]}; promotions by a DAG run: {len(promoted)}",
        found,
    )


def c2(f: Facts) -> Finding:
    commits = recorded_commits(f)
    return _finding(
        "C2",
        "Source code repository",
        bool(commits),
        f"the code the models were trained with is commit {', '.join(commits)} of this repository",
        f"no recorded commit is in this repository (recorded: {sorted(f.commits) or 'none'})",
        [commit_link(c) for c in commits],
    )


def c3(f: Facts) -> Finding:
    ok_runs = [r for r in f.dag_runs if r.state == "success"]
    return _finding(
        "C3",
        "Workflow orchestration component (Airflow)",
        bool(ok_runs),
        f"{len(ok_runs)} successful DAG run(s) of {len(f.dag_runs)} in Airflow's metadata DB",
        f"no successful DAG run ({'; '.join(f.problems) or 'none'})",
        [dag_link(f, r) for r in ok_runs],
    )


def c4(f: Facts) -> Finding:
    n, found = _runs(f, "features", "feast_apply", "materialize")
    services = sorted(
        {r.tags.get(tag.PREFIX + "feature_service", "") for r in f.training_runs} - {""}
    )
    ok = bool(n) and bool(services)
    return _finding(
        "C4",
        "Feature store system (Feast)",
        ok,
        f"{n} feature DAG run(s) applied and materialized to Feast; training read "
        f"the feature service(s) {', '.join(services)}",
        f"materializing runs: {n}; feature services read by training: {services or 'none'}",
        found + file_links(f, "feast_registry"),
    )


def c5(f: Facts) -> Finding:
    n, found = _runs(f, "training", "train")
    runs = [r for r in f.training_runs if r.metrics]
    return _finding(
        "C5",
        "Model training infrastructure",
        bool(n) and bool(runs),
        f"{n} training DAG run(s) trained; {len(runs)} MLflow training run(s) with holdout metrics",
        f"train tasks succeeded: {n}; training runs with metrics: {len(runs)}",
        found + [run_link(f, r, "training run") for r in runs],
    )


def c6(f: Facts) -> Finding:
    aliased = [v for v in f.versions if v.aliases]
    return _finding(
        "C6",
        "Model registry (MLflow)",
        bool(aliased),
        f"{len(f.versions)} version(s) of {f.settings.model_name}; aliases: "
        + ", ".join(f"{a}=v{v.version}" for v in aliased for a in v.aliases),
        f"{len(f.versions)} version(s), none with an alias",
        [version_link(f, v) for v in f.versions],
    )


def c7(f: Facts) -> Finding:
    runs = f.training_runs + f.monitoring_runs
    ok = bool(f.training_runs) and bool(f.ledger or f.verdicts)
    found = [run_link(f, r, "training run") for r in f.training_runs]
    found += [run_link(f, r, "monitoring run") for r in f.monitoring_runs]
    return _finding(
        "C7",
        "ML metadata stores (MLflow, ledger, decision log)",
        ok,
        f"{len(runs)} MLflow run(s) with closedloop tags; {len(f.ledger)} ledger "
        f"entries; {len(f.verdicts)} recorded verdict(s)",
        f"training runs: {len(f.training_runs)}, ledger entries: "
        f"{len(f.ledger)}, verdicts: {len(f.verdicts)}",
        found,
    )


def c8(f: Facts) -> Finding:
    n, found = _runs(f, "batch_inference", "score")
    files = file_links(f, "predictions")
    return _finding(
        "C8",
        "Model serving component (batch scoring)",
        bool(n) and bool(files),
        f"{n} batch inference run(s) scored with the champion; {len(files)} prediction file(s)",
        f"scoring runs: {n}; prediction files: {len(files)}",
        found + files,
    )


def c9(f: Facts) -> Finding:
    reports = f.files.get("drift_reports", [])
    ok = bool(reports) and bool(f.evidently) and bool(f.verdicts)
    return _finding(
        "C9",
        "Monitoring component (Evidently)",
        ok,
        f"{len(reports)} Evidently drift report(s), {len(f.evidently)} in the "
        f"workspace, {len(f.verdicts)} verdict(s)",
        f"drift reports: {len(reports)}, workspace reports: {len(f.evidently)}, "
        f"verdicts: {len(f.verdicts)}",
        file_links(f, "drift_reports") + evidently_links(f),
    )


COMPONENTS = (c1, c2, c3, c4, c5, c6, c7, c8, c9)

# -- workflow steps ----------------------------------------------------------------------


def s_validate(f: Facts) -> Finding:
    n, found = _runs(f, "features", "extract", "validate")
    gx = file_links(f, "gx_batch") + file_links(f, "data_docs")
    quarantined = file_links(f, "quarantine")
    return _finding(
        "land",
        "Land and validate (Great Expectations)",
        bool(n) and bool(gx),
        f"{n} feature run(s) extracted and validated landed batches; "
        f"{len(file_links(f, 'gx_batch'))} GX result page(s); "
        f"{len(quarantined)} batch(es) quarantined",
        f"validating runs: {n}; GX result pages: {len(gx)}",
        found + gx + quarantined,
    )


def s_features(f: Facts) -> Finding:
    tasks = ("clean", "engineer", "load_offline_store", "feast_apply", "materialize")
    n, found = _runs(f, "features", *tasks)
    return _finding(
        "features",
        "Features and feature store",
        bool(n),
        f"{n} feature run(s) ran {', '.join(tasks)}",
        "no feature run engineered, loaded and materialized features",
        found,
    )


def s_training_set(f: Facts) -> Finding:
    n, found = _runs(f, "training", "build_training_set", "validate_training_set")
    files = file_links(f, "training_sets") + file_links(f, "gx_training_set")
    return _finding(
        "training_set",
        "Training set (Feast point-in-time, GX)",
        bool(n),
        f"{n} training run(s) built and validated a training set",
        "no training set was built and validated",
        found + files,
    )


def s_train(f: Facts) -> Finding:
    n, found = _runs(f, "training", "train")
    return _finding(
        "train",
        "Train (MLflow)",
        bool(n) and bool(f.training_runs),
        f"{n} run(s) trained; {len(f.training_runs)} MLflow training run(s)",
        "no training run",
        found + [run_link(f, r, "training run") for r in f.training_runs],
    )


def s_register(f: Facts) -> Finding:
    n, found = _runs(f, "training", "register")
    return _finding(
        "register",
        "Register",
        bool(n) and bool(f.versions),
        f"{n} run(s) registered {len(f.versions)} version(s)",
        "no version registered",
        found + [version_link(f, v) for v in f.versions],
    )


def s_gate(f: Facts) -> Finding:
    n, found = _runs(f, "training", "gate")
    moves = [e for e in f.ledger if e.dag_id]
    lines = [f"{e.action} {e.alias} v{e.version} by {e.run_id}: {e.reason}" for e in moves]
    return _finding(
        "gate",
        "Gate and promote",
        bool(n) and bool(moves),
        f"{n} gate run(s); ledger: " + " | ".join(lines),
        f"gate runs: {n}; ledger entries by a DAG run: {len(moves)}",
        found,
    )


def s_score(f: Facts) -> Finding:
    finding = c8(f)
    return Finding("score", "Serve / batch-score", finding.exercised, finding.why, finding.links)


def s_monitor(f: Facts) -> Finding:
    n, found = _runs(f, "monitoring", "drift", "performance", "decide")
    reports = verdict_reports(f)
    return _finding(
        "monitor",
        "Monitor (drift, performance, verdict)",
        bool(n) and bool(reports),
        f"{n} monitoring run(s); verdicts: "
        + ", ".join(f"{v.day} {'RETRAIN' if v.retrain else 'ok'}" for v in f.verdicts),
        f"monitoring runs: {n}; drift reports of a verdict: {len(reports)}",
        found
        + [file_link(p, f"drift report {p.parent.name}") for p in reports]
        + evidently_links(f),
    )


def s_trigger(f: Facts) -> Finding:
    triggered = with_task(f, "monitoring", "trigger_training")
    chains = training_chain(f)
    ok = bool(triggered) and bool(chains)
    found = [dag_link(f, r) for r in triggered]
    found += [dag_link(f, run) for run, _ in chains]
    return _finding(
        "trigger",
        "Retrain trigger",
        ok,
        f"monitoring triggered {', '.join(r.run_id for r, _ in chains)}",
        f"monitoring runs whose trigger task ran: {len(triggered)}; training runs "
        f"it started that registered a version: {len(chains)}",
        found,
    )


STEPS = (
    s_validate,
    s_features,
    s_training_set,
    s_train,
    s_register,
    s_gate,
    s_score,
    s_monitor,
    s_trigger,
)
