"""The DAG factory: four DAGs per use-case declaration, wired the same way for each.

``dags/closedloop_usecases.py`` calls :func:`usecase_dags` for every declaration in the
configured folder (``CLOSEDLOOP_USECASES_DIR``). A use case ``NAME`` gets
``NAME_features``, ``NAME_training``, ``NAME_batch_inference`` and
``NAME_monitoring``, chained by its Assets (:mod:`closedloop.assets`); cadence, timezone,
the first interval and the training schedule come from its ``schedule`` block. Only the
declarations are read at parse time (YAML and pydantic), never a store.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import (
    DAG,
    AssetOrTimeSchedule,
    CronDataIntervalTimetable,
    CronTriggerTimetable,
    chain,
)

from closedloop.assets import usecase_assets
from closedloop.core.gate import GatePolicy
from closedloop.notifiers import approval_notifier, task_callbacks
from closedloop.operators.approval import PromotionApprovalOperator
from closedloop.operators.features import (
    CleanBatchOperator,
    EngineerFeaturesOperator,
    ExtractBatchOperator,
    FeastApplyOperator,
    FeastMaterializeOperator,
    LoadOfflineStoreOperator,
    ValidateBatchOperator,
)
from closedloop.operators.monitoring import (
    TRIGGER_CONF_KEY,
    ABTestReportOperator,
    DriftCheckOperator,
    MonitoringDecisionOperator,
    PerformanceCheckOperator,
)
from closedloop.operators.scoring import BatchScoreOperator
from closedloop.operators.training import (
    BuildTrainingSetOperator,
    PromotionGateOperator,
    RegisterModelOperator,
    SkipIfUnchangedOperator,
    TrainModelOperator,
    ValidateTrainingSetOperator,
)

if TYPE_CHECKING:
    from pathlib import Path

    from closedloop.core.usecase import UseCase

#: every task retries twice; the delay is Airflow's [core] default_task_retry_delay
#: (closedloop.platform.runtime sets it)
DEFAULT_ARGS = {"retries": 2}


def usecase_dags(
    usecase: UseCase, path: Path, connections: dict[str, str] | None = None
) -> list[DAG]:
    """The four DAGs of the use case declared in ``path``; ``connections``
    (``mlflow_conn_id``, ``feast_conn_id``) go to every operator."""
    # No start_date: Airflow creates no task for a run before a DAG's start date and
    # calls that run a success, so the declared start is enforced by the tasks instead
    # (a run for an earlier interval fails, naming it); catchup is off, so the scheduler
    # only ever plans the latest interval.
    common = {
        "catchup": False,
        "max_active_runs": 1,
        "default_args": {
            **DEFAULT_ARGS,
            "usecase_file": str(path),
            **(connections or {}),
            # alerts: quarantine, verdicts, promotions, failures (closedloop.notifiers)
            **task_callbacks(str(path)),
        },
    }
    return [
        features_dag(usecase, common),
        training_dag(usecase, common),
        batch_inference_dag(usecase, common),
        monitoring_dag(usecase, common),
    ]


def _tags(usecase: UseCase, stage: str) -> list[str]:
    return ["closedloop", stage, usecase.name]


def _interval_timetable(usecase: UseCase) -> CronDataIntervalTimetable:
    return CronDataIntervalTimetable(usecase.cron, timezone=usecase.schedule.timezone)


def _daily_timetable(usecase: UseCase) -> CronDataIntervalTimetable:
    """Monitoring's: its windows and verdicts are days, whatever the batch cadence."""
    return CronDataIntervalTimetable("0 0 * * *", timezone=usecase.schedule.timezone)


def features_dag(usecase: UseCase, common: dict) -> DAG:
    assets = usecase_assets(usecase)
    doc = f"""
### Feature pipeline — {usecase.name}

{usecase.description}

One run per {usecase.batch.cadence} data interval:

1. **extract** the interval's landed batch (`landing/{usecase.name}/<interval>.\
{usecase.batch.format}`);
2. **validate** it with Great Expectations — a failing batch is quarantined with a JSON
   report and the run stops; nothing of it reaches the stores;
3. **clean** it to the declared types;
4. **engineer** the event features ({len(usecase.event_features)}) and the windowed
   aggregates per entity ({", ".join(usecase.features.aggregations) or "none"}),
   point in time, carried forward from the previous interval's state;
5. **load** the interval's partitions into the offline store (a rerun replaces them);
6. **apply** the generated Feast objects and **materialize** the interval online.

Data starts on {usecase.schedule.start} ({usecase.schedule.timezone}): a run for an
earlier interval fails. A successful run emits the `{assets.features.name}` Asset that
`{usecase.dag_ids["training"]}` schedules on.
"""
    with DAG(
        dag_id=usecase.dag_ids["features"],
        description=f"Land, validate and engineer {usecase.name} events into Feast.",
        doc_md=doc,
        schedule=_interval_timetable(usecase),
        tags=_tags(usecase, "features"),
        **common,
    ) as dag:
        extract = ExtractBatchOperator(task_id="extract")
        validate = ValidateBatchOperator(task_id="validate")
        clean = CleanBatchOperator(task_id="clean")
        engineer = EngineerFeaturesOperator(task_id="engineer", clean_uri=clean.output)
        load = LoadOfflineStoreOperator(task_id="load_offline_store", staged=engineer.output)
        apply = FeastApplyOperator(task_id="feast_apply")
        materialize = FeastMaterializeOperator(task_id="materialize", outlets=[assets.features])
        chain(extract, validate, clean, engineer, load, apply, materialize)
    return dag


def training_dag(usecase: UseCase, common: dict) -> DAG:
    assets = usecase_assets(usecase)
    cron = usecase.schedule.training_cron
    policy = GatePolicy(**usecase.model.gate)
    approval = (
        f"7. **approve**: a person approves the blessed version (Browse → Required Actions)"
        f" before it becomes `champion`; unanswered for {policy.approval_timeout_hours:g} h,"
        " it expires rejected.\n"
        if policy.needs_approval
        else ""
    )
    doc = f"""
### Training pipeline — {usecase.name}

Runs when the feature pipeline publishes new features (the `{assets.features.name}`
Asset){f" and on `{cron}`" if cron else ""}, or when triggered — by a person or by
`{usecase.dag_ids["monitoring"]}` — with a `conf` such as
`{{"reason": "drift", "as_of": "2026-02-28T00:00:00+00:00"}}`.

1. **build_training_set**: the window's labelled events joined with the Feast feature
   service `{usecase.feature_service}`, point in time correct, with a content digest;
2. **validate_training_set**: Great Expectations (rows, label balance, nulls, ranges);
3. **skip_if_unchanged**: same data, code and parameters as the champion → skip the rest;
4. **train**: a seeded search (nested MLflow runs), evaluated on a holdout of the most
   recent days, one parent MLflow run with lineage tags;
5. **register** the version of `{usecase.model_name}`; 6. **gate**: champion and
   candidate scored on the same holdout; only a blessed version becomes `champion`.
{approval}"""
    schedule = (
        AssetOrTimeSchedule(
            timetable=CronTriggerTimetable(cron, timezone=usecase.schedule.timezone),
            assets=[assets.features],
        )
        if cron
        else [assets.features]
    )
    with DAG(
        dag_id=usecase.dag_ids["training"],
        description=f"Train, track, register and gate {usecase.model_name}.",
        doc_md=doc,
        schedule=schedule,
        tags=_tags(usecase, "training"),
        **common,
    ) as dag:
        build = BuildTrainingSetOperator(task_id="build_training_set")
        validate = ValidateTrainingSetOperator(task_id="validate_training_set", built=build.output)
        skip = SkipIfUnchangedOperator(task_id="skip_if_unchanged", built=build.output)
        train = TrainModelOperator(task_id="train", built=build.output, validation=validate.output)
        register = RegisterModelOperator(task_id="register", trained=train.output)
        gate = PromotionGateOperator(
            task_id="gate", built=build.output, trained=train.output, version=register.output
        )
        chain(build, validate, skip, train, register, gate)
        if policy.needs_approval:
            approve = PromotionApprovalOperator(
                task_id="approve",
                outcome=gate.output,
                response_timeout=timedelta(hours=policy.approval_timeout_hours),
                assigned_users=[{"id": user, "name": user} for user in policy.approvers] or None,
                retries=0,  # an answer is not retried; a rerun of the run finds it in the ledger
                notifiers=[approval_notifier(common["default_args"]["usecase_file"])],
            )
            gate >> approve
    return dag


def batch_inference_dag(usecase: UseCase, common: dict) -> DAG:
    assets = usecase_assets(usecase)
    doc = f"""
### Batch inference — {usecase.name}

One run per {usecase.batch.cadence} interval: the interval's new events are scored with
the `champion` of `{usecase.model_name}`, with features from Feast as of each event's
time (the same join as training), in chunks so memory stays flat. The predictions
partition and the prediction log are rewritten on a rerun, never appended twice. Emits
the `{assets.predictions.name}` Asset.
"""
    with DAG(
        dag_id=usecase.dag_ids["batch_inference"],
        description=f"Score {usecase.name} events with the champion and log every prediction.",
        doc_md=doc,
        schedule=_interval_timetable(usecase),
        tags=_tags(usecase, "inference"),
        **common,
    ) as dag:
        BatchScoreOperator(task_id="score", outlets=[assets.predictions])
    return dag


def monitoring_dag(usecase: UseCase, common: dict) -> DAG:
    training = usecase.dag_ids["training"]
    schedule = usecase.schedule
    doc = f"""
### Monitoring and the feedback loop — {usecase.name}

Each interval: the recent prediction log against the champion's training set.

1. **drift**: Evidently data drift on the model's inputs and prediction drift on its
   score over the last {schedule.drift_window_days} days; HTML and JSON reports, added
   to the Evidently workspace;
2. **performance**: live ROC AUC where labels have become known
   (last {schedule.performance_window_days} days);
3. **decide**: thresholds, a cooldown (unless performance collapsed) and one recorded
   verdict per day, logged to an MLflow monitoring run linked to the champion;
   unless the verdict says retrain, **trigger_training** is skipped;
4. **trigger_training**: `{training}` is triggered with `conf` carrying the reason and
   the report; its run id is derived from the verdict, so a retried monitoring run can
   never start a second training.

**ab_test** (independent): per-arm performance of the online A/B test.
"""
    with DAG(
        dag_id=usecase.dag_ids["monitoring"],
        description="Drift and live performance of the champion; retrain when warranted.",
        doc_md=doc,
        schedule=_daily_timetable(usecase),
        tags=_tags(usecase, "monitoring"),
        **common,
    ) as dag:
        drift = DriftCheckOperator(task_id="drift", window_days=schedule.drift_window_days)
        performance = PerformanceCheckOperator(
            task_id="performance", window_days=schedule.performance_window_days
        )
        decide = MonitoringDecisionOperator(
            task_id="decide", drift=drift.output, performance=performance.output
        )
        trigger = TriggerDagRunOperator(
            task_id="trigger_training",
            trigger_dag_id=training,
            trigger_run_id="{{ ti.xcom_pull(task_ids='decide')['trigger_run_id'] }}",
            conf=decide.output[TRIGGER_CONF_KEY],
            skip_when_already_exists=True,
            wait_for_completion=False,
        )
        chain([drift, performance], decide, trigger)
        ABTestReportOperator(task_id="ab_test", window_days=14)
    return dag
