"""The service's Prometheus metrics, in a registry of its own; with ``--workers N`` the
workers' values live in per-process files that /metrics adds up."""

from __future__ import annotations

# prometheus_client decides at import whether metric values live in per-process files:
# it checks PROMETHEUS_MULTIPROC_DIR, which `feast.metrics` sets when Feast first reads
# the online store. Imported first, our metrics stay in memory when one process serves;
# with `closedloop serve --workers N` the command sets the directory before the workers
# start, and /metrics adds up the workers' files.
import prometheus_client  # isort: skip

import os

#: set by ``closedloop serve --workers N`` (N > 1) for its workers: the directory of their
#: metric files, the same as PROMETHEUS_MULTIPROC_DIR
WORKERS_METRICS_ENV = "CLOSEDLOOP_SERVE_WORKERS_METRICS"


def multiprocess() -> bool:
    """Whether this process is one of several workers whose metrics /metrics adds up
    (``--workers`` > 1). Not prometheus_client's own mode: a lone server can inherit
    PROMETHEUS_MULTIPROC_DIR (Feast sets it in any process that imports it, e.g. the one
    that starts the server); its values then go to files in a directory other processes
    share, and only its own registry says what it did."""
    return bool(os.environ.get(WORKERS_METRICS_ENV))


class Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        buckets = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0)
        self.requests = Counter(
            "closedloop_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "closedloop_request_latency_seconds", "Time in the handler, by endpoint",
            ["endpoint"], buckets=buckets, registry=r,
        )  # fmt: skip
        self.predict_latency = Histogram(
            "closedloop_predict_latency_seconds", "Answered /predict calls by model version",
            ["model_version"], buckets=buckets, registry=r,
        )  # fmt: skip
        self.predictions = Counter(
            "closedloop_predictions", "Predictions by model version and A/B arm",
            ["model_version", "arm"], registry=r,
        )  # fmt: skip
        self.batch_rows = Histogram(
            "closedloop_scoring_batch_rows", "Events per lookup+predict call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r,
        )  # fmt: skip
        # multiprocess_mode: how /metrics combines the workers' values (``--workers``)
        self.serving = Gauge(
            "closedloop_serving_model_version", "1 for the version each alias serves",
            ["alias", "version"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.swaps = Counter("closedloop_model_swaps", "Hot swaps", ["alias"], registry=r)
        self.out_of_band = Counter(
            "closedloop_out_of_band_moves",
            "Alias moves made outside closedloop that this process recorded in the ledger",
            ["alias"],
            registry=r,
        )
        self.webhooks = Counter(
            "closedloop_webhook_deliveries", "MLflow webhook deliveries by outcome "
            "(swap: an alias of this model moved; other: another model's; refused)",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.failures = Counter(
            "closedloop_model_reload_failures", "Failed registry polls or model loads",
            registry=r,
        )  # fmt: skip
        self.registry_up = Gauge(
            "closedloop_registry_up", "1 if the last registry poll succeeded", registry=r,
            multiprocess_mode="livemin",
        )  # fmt: skip
        self.log_records = Counter(
            "closedloop_prediction_log_records", "Prediction records flushed",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.log_pending = Gauge(
            "closedloop_prediction_log_pending", "Records not yet written", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip

    def exposition(self) -> bytes:
        """The text /metrics answers: this process's registry, or every worker's values
        when the metrics live in files."""
        if not multiprocess():
            return prometheus_client.generate_latest(self.registry)
        from prometheus_client import CollectorRegistry
        from prometheus_client import multiprocess as mp

        combined = CollectorRegistry()
        mp.MultiProcessCollector(combined)
        return prometheus_client.generate_latest(combined)
