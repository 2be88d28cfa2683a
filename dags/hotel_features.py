"""
### Feature pipeline — hotel-booking cancellations

One run per daily data interval (the paper's B2, steps 8-12):

1. **extract** the day's landed batch (`landing/hotel_bookings/<day>.csv`);
2. **validate** it with Great Expectations — a failing batch is quarantined with a JSON
   report and the run stops; nothing of it reaches the stores;
3. **clean** it to the declared types;
4. **engineer** booking features and customer / hotel aggregates (point-in-time safe);
5. **load** the day's partitions into the offline store (a rerun replaces them);
6. **apply** the Feast declarations and **materialize** the day to the online store.

A successful run emits the `hotel_features` Asset that the training DAG schedules on.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, CronDataIntervalTimetable, chain

from closedloop.assets import HOTEL_FEATURES
from closedloop.operators.features import (
    CleanBatchOperator,
    EngineerFeaturesOperator,
    ExtractBatchOperator,
    FeastApplyOperator,
    FeastMaterializeOperator,
    LoadOfflineStoreOperator,
    ValidateBatchOperator,
)

with DAG(
    dag_id="hotel_features",
    description="Land, validate, clean and engineer a day of bookings into Feast.",
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["closedloop", "features", "hotel_bookings"],
    # retry_delay: Airflow's [core] default_task_retry_delay, 30 s (closedloop.runtime)
    default_args={"retries": 2},
) as dag:
    extract = ExtractBatchOperator(task_id="extract")
    validate = ValidateBatchOperator(task_id="validate")
    clean = CleanBatchOperator(task_id="clean")
    engineer = EngineerFeaturesOperator(task_id="engineer", clean_uri=clean.output)
    load = LoadOfflineStoreOperator(task_id="load_offline_store", staged=engineer.output)
    apply = FeastApplyOperator(task_id="feast_apply")
    materialize = FeastMaterializeOperator(task_id="materialize", outlets=[HOTEL_FEATURES])

    chain(extract, validate, clean, engineer, load, apply, materialize)

if __name__ == "__main__":
    dag.test()
