"""
### Batch inference — hotel-booking cancellations

One run per day: the day's new bookings are scored with the registry's `champion`, with
features from Feast as of each booking's time (the same join as training), in chunks so
memory stays flat. The predictions partition of the day and the prediction log are
rewritten on a rerun, never appended twice. Emits the `hotel_predictions` Asset.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, CronDataIntervalTimetable

from closedloop.assets import HOTEL_PREDICTIONS
from closedloop.operators.monitoring import BatchScoreOperator

with DAG(
    dag_id="hotel_batch_inference",
    description="Score the day's bookings with the champion and log every prediction.",
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["closedloop", "inference", "hotel_bookings"],
    # retry_delay: Airflow's [core] default_task_retry_delay, 30 s (closedloop.runtime)
    default_args={"retries": 2},
) as dag:
    BatchScoreOperator(task_id="score", outlets=[HOTEL_PREDICTIONS])

if __name__ == "__main__":
    dag.test()
