"""The rules of the paper's principles P1-P9 over collected
:class:`~closedloop.core.evidence.Facts`, and what the rules of the components and steps
(:mod:`closedloop.core.evidence_steps`) share: links to artifacts and derived facts.

Each rule returns a :class:`~closedloop.core.evidence.Finding`: exercised or not, why
(from the facts, also when not), and links to the artifacts that show it. Nothing is
claimed by hand: an item whose facts are missing from the stores is not exercised.
"""

from __future__ import annotations

from pathlib import Path

from closedloop.core import links
from closedloop.core import tags as tag
from closedloop.core.evidence import CI_FILES, DagRun, Facts, Finding, Link, MlflowRun, ModelVersion
from closedloop.core.settings import PROJECT_ROOT

LINEAGE = (
    tag.DAG_RUN_ID,
    tag.DATA_DIGEST,
    tag.GIT_COMMIT,
    tag.PREFIX + "training_set_uri",
    tag.PREFIX + "feature_service",
)
#: how Airflow names a run started by a person (REST API, UI, CLI), not by a DAG
BY_PERSON = ("rest_api", "ui", "cli")


# -- links -------------------------------------------------------------------------------


def dag_link(f: Facts, run: DagRun) -> Link:
    url = links.airflow_dag_run(f.settings, run.dag_id, run.run_id)
    return Link(
        "dag_run", f"{run.dag_id} {run.run_id} ({run.state})", url, (run.dag_id, run.run_id)
    )


def run_link(f: Facts, run: MlflowRun, label: str) -> Link:
    url = links.mlflow_run(f.settings, run.experiment_id, run.run_id)
    return Link("mlflow_run", f"{label} {run.run_id[:8]}", url, (run.run_id,))


def version_link(f: Facts, v: ModelVersion) -> Link:
    model = f.settings.model_name
    aliases = f" ({', '.join(v.aliases)})" if v.aliases else ""
    url = links.mlflow_model_version(f.settings, model, v.version)
    return Link("model_version", f"{model} v{v.version}{aliases}", url, (model, v.version))


def file_link(path: Path, label: str | None = None) -> Link:
    return Link("file", label or path.name, path.resolve().as_uri(), (str(path),))


def file_links(f: Facts, kind: str) -> list[Link]:
    """Links to the files of ``kind``, named relative to the home folder or the checkout."""
    found = []
    for path in f.files.get(kind, []):
        label = str(path)
        for root in (f.settings.home, PROJECT_ROOT):
            if path.is_relative_to(root):
                label = str(path.relative_to(root))
                break
        found.append(file_link(path, label))
    return found


def commit_link(commit: str) -> Link:
    return Link("commit", f"git commit {commit}", "", (commit,))


# -- the facts the rules share -------------------------------------------------------------


def training_chain(f: Facts) -> list[tuple[DagRun, ModelVersion]]:
    """Training DAG runs started by a monitoring verdict (its ``trigger_run_id``) that
    succeeded and registered a version: the feedback loop, closed."""
    training = f.stages["training"]
    chains = []
    for verdict in (v for v in f.verdicts if v.retrain):
        run = f.dag_run(training, verdict.trigger_run_id)
        if run is None or run.state != "success":
            continue
        key = f"{training}/{run.run_id}"
        for version in f.versions:
            mlflow_run = f.run_of_version(version)
            if mlflow_run and mlflow_run.tags.get(tag.DAG_RUN_ID) == key:
                chains.append((run, version))
    return chains


def recorded_commits(f: Facts) -> list[str]:
    return sorted(c for c, known in f.commits.items() if known)


def with_task(f: Facts, stage: str, *tasks: str) -> list[DagRun]:
    """Successful runs of ``stage`` in which every one of ``tasks`` succeeded."""
    return [r for r in f.runs(stage) if all(r.task_ok(t) for t in tasks)]


def verdict_reports(f: Facts) -> list[Path]:
    return [Path(v.report) for v in f.verdicts if v.report and Path(v.report).is_file()]


def evidently_links(f: Facts) -> list[Link]:
    return [
        Link(
            "evidently",
            f"Evidently report {sid[:13]}",
            links.evidently_report(f.settings, pid, sid),
            (str(path),),
        )
        for path, (pid, sid) in f.evidently.items()
    ]


def _complete_lineage(f: Facts) -> list[tuple[ModelVersion, MlflowRun, DagRun]]:
    found = []
    for version in f.versions:
        run = f.run_of_version(version)
        if run is None or not all(run.tags.get(k) for k in LINEAGE):
            continue
        dag_id, _, run_id = run.tags[tag.DAG_RUN_ID].partition("/")
        dag_run = f.dag_run(dag_id, run_id)
        if dag_run is not None:
            found.append((version, run, dag_run))
    return found


def actors(f: Facts) -> dict[str, set[str]]:
    """Who acted, by name: people who started DAG runs, who answered approvals, and who
    moved aliases (the ledger's ``user:`` actors; unnamed before the ledger had actors).
    An out-of-band move has no known actor and names nobody."""
    people: dict[str, set[str]] = {}
    for run in f.dag_runs:
        if run.user and run.triggered_by.lower() in BY_PERSON:
            people.setdefault(run.user, set()).add(f"started {run.dag_id} runs")
    for v in f.versions:
        answer = v.tags.get(tag.APPROVAL, "")
        for verb in ("approved by ", "rejected by "):
            if answer.startswith(verb):
                who = answer.removeprefix(verb).split(":")[0].strip()
                people.setdefault(who, set()).add(f"{verb.split()[0]} v{v.version}")
    for entry in f.ledger:
        if entry.actor and entry.actor.startswith("user:"):  # the ledger names them
            who = entry.actor.removeprefix("user:")
            people.setdefault(who, set()).add(f"{entry.action} v{entry.version}")
        elif entry.dag_id is None and entry.action != "out_of_band":  # before actors
            people.setdefault("a person at the CLI", set()).add(f"{entry.action} v{entry.version}")
    return people


# -- the principles --------------------------------------------------------------------------


def _ci(f: Facts) -> tuple[list[Link], list[str]]:
    return file_links(f, "ci"), recorded_commits(f)


def p1(f: Facts) -> Finding:
    ci, commits = _ci(f)
    ok = len(ci) == len(CI_FILES) and bool(commits)
    why = (
        f"the CI definition ({', '.join(lk.label for lk in ci)}) runs the test suite on a "
        f"clean checkout, and the training runs recorded commit(s) {', '.join(commits)}, "
        "known to this repository"
        if ok
        else f"CI definition files found: {[lk.label for lk in ci] or 'none'}; commits the "
        f"training runs recorded that this repository knows: {commits or 'none'} "
        f"(recorded: {sorted(f.commits) or 'none'})"
    )
    return Finding("P1", "CI/CD automation", ok, why, ci + [commit_link(c) for c in commits])


def p2(f: Facts) -> Finding:
    done = {stage: f.runs(stage) for stage in f.stages}
    ok = bool(done["features"]) and bool(done["training"])
    counts = ", ".join(f"{f.stages[s]}: {len(r)}" for s, r in done.items())
    why = (
        f"the data and model pipelines ran as Airflow DAG runs (successful runs: {counts})"
        if ok
        else f"no successful feature and training DAG runs in Airflow ({counts or 'no runs'}"
        f"{'; ' + '; '.join(f.problems) if f.problems else ''})"
    )
    return Finding(
        "P2",
        "Workflow orchestration",
        ok,
        why,
        [dag_link(f, r) for runs in done.values() for r in runs],
    )


def p3(f: Facts) -> Finding:
    keys = (tag.DATA_DIGEST, tag.GIT_COMMIT, tag.CONFIG_DIGEST, tag.CONFIG)
    runs = [r for r in f.training_runs if all(r.tags.get(k) for k in keys)]
    kept = {str(p) for p in f.files.get("training_sets", [])}
    snapshots = [r for r in runs if r.tags.get(tag.PREFIX + "training_set_uri") in kept]
    ok = bool(snapshots)
    reproduced = file_links(f, "reproduced_sets")
    why = (
        f"{len(snapshots)} training run(s) recorded the data digest, the commit and the "
        "training configuration, and their training sets are kept"
        + (
            f"; {len(reproduced)} reproduction(s) rebuilt a training set"
            if reproduced
            else "; no `closedloop reproduce` was run"
        )
        if ok
        else f"no training run with data digest, commit, configuration and a kept training "
        f"set ({len(f.training_runs)} training run(s), {len(runs)} with the tags)"
    )
    found = [run_link(f, r, "training run") for r in snapshots]
    return Finding(
        "P3", "Reproducibility", ok, why, found + file_links(f, "training_sets") + reproduced
    )


def p4(f: Facts) -> Finding:
    versioned = []
    for v in f.versions:
        run = f.run_of_version(v)
        if run and run.tags.get(tag.DATA_DIGEST) and run.tags.get(tag.GIT_COMMIT):
            versioned.append((v, run))
    ok = bool(versioned) and bool(f.commits)
    digests = sorted({r.tags[tag.DATA_DIGEST][:12] for _, r in versioned})
    why = (
        f"{len(versioned)} model version(s), each from a run that recorded its data "
        f"digest ({', '.join(digests)}) and code commit"
        if ok
        else f"no registered version with a data digest and a commit ({len(f.versions)} version(s))"
    )
    found = [version_link(f, v) for v, _ in versioned] + file_links(f, "training_sets")
    return Finding(
        "P4",
        "Versioning of data, model and code",
        ok,
        why,
        found + [commit_link(c) for c in sorted(f.commits)],
    )


def p5(f: Facts) -> Finding:
    people = actors(f)
    approvals = [
        v
        for v in f.versions
        if v.tags.get(tag.APPROVAL, "").startswith(("approved by ", "rejected by "))
    ]
    ok = len(people) >= 2 or bool(approvals)
    named = "; ".join(f"{p}: {', '.join(sorted(a))}" for p, a in sorted(people.items()))
    why = (
        f"more than one person or role acted: {named}"
        if ok
        else f"only {len(people)} named person acted ({named or 'nobody'}) and no promotion "
        "was approved by a named user: set `model.gate.approval: required` to have a "
        "person approve what the pipeline trained"
    )
    found = [version_link(f, v) for v in approvals]
    found += [dag_link(f, r) for r in f.dag_runs if r.user and r.triggered_by.lower() in BY_PERSON][
        :5
    ]
    return Finding("P5", "Collaboration", ok, why, found)


def p6(f: Facts) -> Finding:
    retrains = [r for r in f.runs("training") if r.conf.get("reason") not in (None, "initial")]
    judged = []
    for run in retrains:
        key = f"{run.dag_id}/{run.run_id}"
        for v in f.versions:
            mlflow_run = f.run_of_version(v)
            if (
                mlflow_run
                and mlflow_run.tags.get(tag.DAG_RUN_ID) == key
                and (v.tags.get(tag.GATE) or v.tags.get(tag.REJECTION_REASON))
            ):
                judged.append((run, v))
    ok = bool(judged)
    why = (
        f"{len(judged)} training run(s) after the first ({', '.join(r.run_id for r, _ in judged)}) "
        "trained a new version, which the gate evaluated against the champion: "
        + "; ".join((v.tags.get(tag.GATE) or v.tags[tag.REJECTION_REASON])[:160] for _, v in judged)
        if ok
        else f"no training DAG run beyond the initial one registered a version the gate "
        f"judged ({len(retrains)} later training run(s))"
    )
    found = [x for r, v in judged for x in (dag_link(f, r), version_link(f, v))]
    return Finding("P6", "Continuous training and evaluation", ok, why, found)


def p7(f: Facts) -> Finding:
    complete = _complete_lineage(f)
    ok = bool(complete) and len(complete) == len(f.versions)
    why = (
        "every model version leads to its training run, whose tags name the Airflow DAG run, "
        "the Feast feature service, the training set, its digest and the commit"
        if ok
        else f"{len(complete)} of {len(f.versions)} model version(s) have complete lineage "
        "(run tags and an existing DAG run)"
    )
    found = [
        x
        for v, r, d in complete
        for x in (version_link(f, v), run_link(f, r, "training run"), dag_link(f, d))
    ]
    return Finding("P7", "Metadata tracking and logging (lineage)", ok, why, found)


def p8(f: Facts) -> Finding:
    runs = f.runs("monitoring")
    reports = verdict_reports(f)
    ok = bool(runs) and bool(reports)
    why = (
        f"{len(runs)} monitoring DAG run(s) judged {len(f.verdicts)} day(s) with "
        f"{len(reports)} Evidently drift report(s) and {len(f.monitoring_runs)} MLflow "
        "monitoring run(s)"
        if ok
        else f"no monitoring: {len(runs)} successful monitoring DAG run(s), "
        f"{len(reports)} drift report(s) of a verdict"
    )
    found = [dag_link(f, r) for r in runs]
    found += [
        run_link(f, r, f"monitoring {r.tags.get(tag.MONITORING_DAY)}") for r in f.monitoring_runs
    ]
    found += [file_link(p, f"drift report {p.parent.name}") for p in reports]
    return Finding("P8", "Continuous monitoring", ok, why, found + evidently_links(f))


def p9(f: Facts) -> Finding:
    chains = training_chain(f)
    asked = [v for v in f.verdicts if v.retrain]
    ok = bool(chains)
    promoted = {e.run_id for e in f.ledger if e.action == "promote"}
    why = (
        "; ".join(
            f"the verdict of {run.run_id.rsplit('__', 1)[-1]} asked to retrain, which started "
            f"{run.dag_id} {run.run_id}, which registered v{v.version}"
            + (" (promoted)" if run.run_id in promoted else " (not promoted)")
            for run, v in chains
        )
        if ok
        else f"no monitoring verdict led to a training run that registered a version "
        f"({len(asked)} verdict(s) asked to retrain)"
    )
    found = [x for run, v in chains for x in (dag_link(f, run), version_link(f, v))]
    found += [
        file_link(Path(v.report), f"verdict report {v.day}")
        for v in asked
        if v.report and Path(v.report).is_file()
    ]
    return Finding("P9", "Feedback loops", ok, why, found)


PRINCIPLES = (p1, p2, p3, p4, p5, p6, p7, p8, p9)
