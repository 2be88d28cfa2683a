"""Operators of the training pipeline: thin adapters from a DAG run (its ``conf``, its
id) to ``closedloop.core.training_pipeline`` and back; the XComs are the typed payloads
of :mod:`closedloop.core.payloads` as dicts.

``conf`` of a run may carry ``reason`` (manual, drift, schedule, ...), ``as_of`` (the end
of the training window, ISO-8601; default: the run's data interval end or its run-after
time), ``window_days`` and ``drop_features`` (to train a deliberately weaker model).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseXCom, SkipMixin
from airflow.sdk.exceptions import AirflowSkipException

from closedloop.core import links
from closedloop.core.approval import AWAITING
from closedloop.core.payloads import TrainedModel, TrainingSetRef
from closedloop.operators.base import ClosedLoopOperator, decisions_fail_the_task
from closedloop.operators.links import MlflowRunLink, ModelVersionLink

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

    from closedloop.core.settings import Settings


def _conf(context: Context) -> dict[str, Any]:
    return dict(context["dag_run"].conf or {})


def _run_key(context: Context) -> str:
    return f"{context['dag'].dag_id}/{context['run_id']}"


def trigger_reason(context: Context) -> str:
    """Why this run trains: ``conf.reason``, else what started the run."""
    conf = _conf(context)
    if conf.get("reason"):
        return str(conf["reason"])
    run_type = str(getattr(context["dag_run"], "run_type", "manual"))
    return {"scheduled": "schedule", "asset_triggered": "new features"}.get(
        run_type.rsplit(".", 1)[-1].lower(), run_type.rsplit(".", 1)[-1].lower()
    )


def as_of(context: Context) -> datetime:
    """The end of the training window: ``conf.as_of``; for a run started by new features,
    the end of the newest interval they cover; else the run's data interval end or the
    time it was due to run."""
    conf = _conf(context)
    if conf.get("as_of"):
        return datetime.fromisoformat(conf["as_of"])
    ends = [
        datetime.fromisoformat(str(event.extra["interval_end"]))
        for events in (context.get("triggering_asset_events") or {}).values()
        for event in events
        if (event.extra or {}).get("interval_end")
    ]
    if ends:
        return max(ends)
    end = context.get("data_interval_end") or context["dag_run"].run_after
    return datetime.fromisoformat(end.isoformat())


class BuildTrainingSetOperator(ClosedLoopOperator):
    """Join the window's labelled events with the model's Feast features (point in
    time correct) and snapshot the training set."""

    def execute(self, context: Context) -> dict[str, Any]:
        from closedloop.core.training_pipeline import build_training_set, training_window

        settings = self.settings()
        start, end = training_window(settings, as_of(context), _conf(context).get("window_days"))
        built = build_training_set(settings, start, end, _run_key(context))
        self.log.info(
            "Training set %s: %d rows, digest %s", built.uri, built.rows, built.digest[:12]
        )
        return built.to_dict()


class ValidateTrainingSetOperator(ClosedLoopOperator):
    """Great Expectations on the training set: rows, label balance, nulls, ranges.

    :param built: the build task's XCom (templated).
    """

    template_fields: Sequence[str] = (*ClosedLoopOperator.template_fields, "built")

    def __init__(self, *, built: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.built = built

    def execute(self, context: Context) -> dict[str, Any]:
        from closedloop.core.training_pipeline import validate_training

        with decisions_fail_the_task(context):
            return validate_training(
                self.settings(), TrainingSetRef.from_dict(self.built), run_name=context["run_id"]
            )


class SkipIfUnchangedOperator(ClosedLoopOperator):
    """Skip the rest of the run when the champion was trained on the same data digest,
    code version and parameters (step caching).

    :param built: the build task's XCom (templated).
    """

    template_fields: Sequence[str] = (*ClosedLoopOperator.template_fields, "built")

    def __init__(self, *, built: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.built = built

    def execute(self, context: Context) -> dict[str, str]:
        from closedloop.core.lineage import git_commit
        from closedloop.core.training_pipeline import (
            cache_key,
            training_config,
            unchanged_since_champion,
        )

        settings = self.settings()
        config = training_config(settings, **_overrides(_conf(context)))
        key = cache_key(TrainingSetRef.from_dict(self.built), config, git_commit())
        reason = unchanged_since_champion(settings, key)
        if reason:
            self.log.info("Skipping training: %s", reason)
            raise AirflowSkipException(f"nothing changed: {reason}")
        return key


def _overrides(conf: dict[str, Any]) -> dict[str, Any]:
    return {"drop_features": conf["drop_features"]} if conf.get("drop_features") else {}


class TrainModelOperator(ClosedLoopOperator):
    """Tune, train and evaluate; one MLflow parent run per DAG run with lineage tags.

    :param built: the build task's XCom (templated).
    :param validation: the validation task's XCom (templated).
    """

    template_fields: Sequence[str] = (*ClosedLoopOperator.template_fields, "built", "validation")
    operator_extra_links = (*ClosedLoopOperator.operator_extra_links, MlflowRunLink())

    def __init__(self, *, built: Any, validation: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.built = built
        self.validation = validation

    def execute(self, context: Context) -> dict[str, Any]:
        from closedloop.core.training_pipeline import lineage_for, train, training_config

        settings = self.settings()
        built = TrainingSetRef.from_dict(self.built)
        lineage = lineage_for(
            settings,
            built,
            self.validation,
            dag_id=context["dag"].dag_id,
            dag_run_id=_run_key(context),
            reason=trigger_reason(context),
        )
        trained = train(
            settings, built, lineage, training_config(settings, **_overrides(_conf(context)))
        )
        self.add_link(MlflowRunLink.name, _run_url(settings, trained.run_id))
        self.log.info(
            "MLflow run %s: %s",
            trained.run_id,
            {k: round(v, 4) for k, v in trained.metrics.items() if "." not in k},
        )
        return trained.to_dict()


class RegisterModelOperator(ClosedLoopOperator):
    """Register the trained model as a new version (once per DAG run).

    :param trained: the train task's XCom (templated).
    """

    template_fields: Sequence[str] = (*ClosedLoopOperator.template_fields, "trained")
    operator_extra_links = (
        *ClosedLoopOperator.operator_extra_links,
        MlflowRunLink(),
        ModelVersionLink(),
    )

    def __init__(self, *, trained: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trained = trained

    def execute(self, context: Context) -> str:
        from closedloop.core.training_pipeline import register

        settings = self.settings()
        trained = TrainedModel.from_dict(self.trained)
        version = register(settings, trained, _run_key(context))
        self.add_link(MlflowRunLink.name, _run_url(settings, trained.run_id))
        page = links.mlflow_model_version(settings, settings.model_name, version)
        self.add_link(ModelVersionLink.name, page)
        self.log.info("Registered version %s", version)
        return version


class PromotionGateOperator(ClosedLoopOperator, SkipMixin):
    """Compare the new version with the champion on the same holdout; promote it to
    ``champion`` only if blessed, else make it the ``challenger``. With
    ``model.gate.approval: required`` a blessed version is held for the approval task
    downstream instead; any other outcome skips that task.

    :param built: the build task's XCom; :param trained: the train task's XCom;
    :param version: the register task's XCom (all templated).
    """

    template_fields: Sequence[str] = (
        *ClosedLoopOperator.template_fields,
        "built",
        "trained",
        "version",
    )
    operator_extra_links = (*ClosedLoopOperator.operator_extra_links, ModelVersionLink())
    inherits_from_skipmixin = True

    def __init__(self, *, built: Any, trained: Any, version: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.built, self.trained, self.version = built, trained, version

    def execute(self, context: Context) -> dict[str, Any]:
        from closedloop.core.training_pipeline import gate, training_config

        settings = self.settings()
        self.add_link(
            ModelVersionLink.name,
            links.mlflow_model_version(settings, settings.model_name, str(self.version)),
        )
        outcome = gate(
            settings,
            TrainingSetRef.from_dict(self.built),
            TrainedModel.from_dict(self.trained),
            str(self.version),
            dag_id=context["dag"].dag_id,
            run_id=context["run_id"],
            # the config the candidate was trained with: its holdout is the one compared
            config=training_config(settings, **_overrides(_conf(context))),
        )
        self.log.info(
            "Version %s %s: %s", self.version, outcome.action, "; ".join(outcome.decision.reasons)
        )
        result = outcome.to_dict()
        downstream = context["task"].get_direct_relatives(upstream=False)
        if downstream and outcome.action != AWAITING:
            # nothing to approve: the approval task is skipped, this task succeeds
            ti = context["ti"]
            ti.xcom_push(key=BaseXCom.XCOM_RETURN_KEY, value=result)
            self.skip(ti=ti, tasks=downstream)
        return result


def _run_url(settings: Settings, run_id: str) -> str:
    """The MLflow UI page of a run (its experiment asked of the tracking server)."""
    from closedloop.core.registry import client_for

    experiment = client_for(settings).get_run(run_id).info.experiment_id
    return links.mlflow_run(settings, experiment, run_id)
