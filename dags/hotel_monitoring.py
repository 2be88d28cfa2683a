"""
### Monitoring and the feedback loop — hotel-booking cancellations

Daily: the recent prediction log against the champion's training set.

1. **drift**: Evidently data drift on the model's features and prediction drift on its
   score; HTML and JSON reports per day, added to the Evidently workspace;
2. **performance**: live ROC AUC where cancellations have become known;
3. **decide**: thresholds, a cooldown (unless performance collapsed) and one recorded
   verdict per day, logged to an MLflow monitoring run linked to the champion version;
   unless the verdict says retrain, it short-circuits: **trigger_training** is skipped;
4. **trigger_training**: `hotel_training` is triggered with `conf` carrying the reason
   and the report; its run id is derived from the verdict, so a retried monitoring run
   can never start a second training.

**ab_test** (independent): per-arm performance of the online A/B test (champion vs
challenger) on the outcomes known so far, with a bootstrap confidence interval of the
difference in the primary metric — the numbers a promotion out of an A/B test rests on.
"""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, CronDataIntervalTimetable, chain

from closedloop.operators.monitoring import (
    TRIGGER_CONF_KEY,
    ABTestReportOperator,
    DriftCheckOperator,
    MonitoringDecisionOperator,
    PerformanceCheckOperator,
)

with DAG(
    dag_id="hotel_monitoring",
    description="Drift and live performance of the champion; retrain when warranted.",
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["closedloop", "monitoring", "hotel_bookings"],
    # retry_delay: Airflow's [core] default_task_retry_delay, 30 s (closedloop.runtime)
    default_args={"retries": 2},
) as dag:
    drift = DriftCheckOperator(task_id="drift", window_days=3)
    performance = PerformanceCheckOperator(task_id="performance", window_days=7)
    decide = MonitoringDecisionOperator(
        task_id="decide", drift=drift.output, performance=performance.output
    )
    trigger = TriggerDagRunOperator(
        task_id="trigger_training",
        trigger_dag_id="hotel_training",
        trigger_run_id="{{ ti.xcom_pull(task_ids='decide')['trigger_run_id'] }}",
        conf=decide.output[TRIGGER_CONF_KEY],
        skip_when_already_exists=True,
        wait_for_completion=False,
    )
    chain([drift, performance], decide, trigger)
    # A/B test of the online service (champion vs challenger arms), on its own: it
    # informs a promotion, it does not trigger retraining.
    ab_test = ABTestReportOperator(task_id="ab_test", window_days=14)

if __name__ == "__main__":
    dag.test()
