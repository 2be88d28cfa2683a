"""
### Training pipeline — hotel-booking cancellations

Runs when the feature pipeline publishes new features (the `hotel_features` Asset) and
weekly, or when triggered — by a person or by the monitoring DAG — with a `conf` such as
`{"reason": "drift", "as_of": "2026-02-28T00:00:00+00:00"}`.

1. **build_training_set**: the window's labelled bookings joined with the model's Feast
   `FeatureService`, point in time correct, snapshotted with a content digest;
2. **validate_training_set**: Great Expectations (rows, label balance, nulls, ranges);
3. **skip_if_unchanged**: same data, code and parameters as the champion → skip the rest;
4. **train**: a seeded search (nested MLflow runs), the final model evaluated on a
   holdout of the most recent days, one parent MLflow run with lineage tags;
5. **register** the version; 6. **gate**: champion and candidate scored on the same
   holdout; only a blessed version becomes `champion`, otherwise `challenger`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, chain

from closedloop.assets import HOTEL_FEATURES
from closedloop.operators.training import (
    BuildTrainingSetOperator,
    PromotionGateOperator,
    RegisterModelOperator,
    SkipIfUnchangedOperator,
    TrainModelOperator,
    ValidateTrainingSetOperator,
)

with DAG(
    dag_id="hotel_training",
    description="Train, track, register and gate the hotel-cancellation model.",
    doc_md=__doc__,
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 3 * * 1", timezone="UTC"), assets=[HOTEL_FEATURES]
    ),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["closedloop", "training", "hotel_bookings"],
    # retry_delay: Airflow's [core] default_task_retry_delay, 30 s (closedloop.runtime)
    default_args={"retries": 2},
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

if __name__ == "__main__":
    dag.test()
