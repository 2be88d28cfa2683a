"""What the endpoints serve from: the service's options (:class:`ServeConfig`) and its
state (:class:`Service`: feature store, scorer, model follower, batcher, log writer)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from closedloop.serving.batcher import Batcher
from closedloop.serving.metrics import Metrics
from closedloop.serving.schema import event_model

if TYPE_CHECKING:
    from closedloop.core.settings import Settings


@dataclass(frozen=True)
class ServeConfig:
    """How the service runs (``closedloop serve`` options)."""

    challenger_share: float = 0.0  # share of keys sent to the challenger (A/B); 0 = off
    poll_seconds: float = 5.0  # how often the registry's aliases are checked
    max_events: int = 100  # per request; more is a 413
    max_rows: int = 256  # per scoring call of the batcher
    max_body_bytes: int = 1_000_000
    log_flush_seconds: float = 1.0
    log_max_records: int = 5000
    #: when set, /predict, /metrics and the docs want it in an ``X-API-Key`` header (or
    #: ``Authorization: Bearer``); /health and /ready stay open for health checks
    api_key: str | None = None
    #: ``--roles``: a roles declaration whose users' API keys (``serving_key_env``) open
    #: the endpoints of their role's ``serving`` (closedloop.core.roles); others get 403
    roles_file: str | None = None
    #: ``--shadow``: score the ``challenger`` beside the champion after each answer
    #: (serving/shadow.py); at most this many rows wait, more are dropped and counted
    shadow: bool = False
    shadow_max_pending: int = 10_000
    #: ``--webhook-url``: answer MLflow's alias webhooks at POST /webhooks/mlflow (signed
    #: with CLOSEDLOOP_SERVE_WEBHOOK_SECRET; serving/webhook.py); the poll is the fallback
    webhook: bool = False
    #: with several workers: the file a webhook received by one touches to wake them all
    wake_file: str | None = None

    def to_environ(self) -> str:
        """The options for worker processes (JSON, without the API key: that stays in
        ``CLOSEDLOOP_SERVE_API_KEY``)."""
        return json.dumps({k: v for k, v in asdict(self).items() if k != "api_key"})


#: the environment variable that carries :class:`ServeConfig` to worker processes
CONFIG_ENV = "CLOSEDLOOP_SERVE_CONFIG"


class Service:
    """The state behind the endpoints: store, scorer, follower, batcher, log writer."""

    def __init__(self, settings: Settings, config: ServeConfig) -> None:
        self.settings, self.config = settings, config
        self.metrics = Metrics()
        self.scorer: Any = None
        self.follower: Any = None
        self.batcher: Batcher | None = None
        self.writer: Any = None
        self.shadow: Any = None
        self.adapter: TypeAdapter | None = None
        self.event: Any = None
        self.fields: list[str] = []
        self.error: str | None = None
        self._probe: dict[str, Any] | None = None
        self._serving_labels: list[tuple[str, str]] = []

    # -- life cycle -----------------------------------------------------------------
    def start(self) -> None:
        from closedloop.core.feature_store import open_store
        from closedloop.core.prediction_log import PredictionLog
        from closedloop.serving.follower import ModelFollower
        from closedloop.serving.logwriter import PredictionLogWriter
        from closedloop.serving.scorer import OnlineScorer

        self.writer = PredictionLogWriter(
            PredictionLog(self.settings.prediction_log_dir),
            max_records=self.config.log_max_records,
            flush_seconds=self.config.log_flush_seconds,
            on_flush=self._flushed,
            on_written=self._written,
        )
        self.follower = ModelFollower(
            self.settings,
            challenger_share=self.config.challenger_share,
            poll_seconds=self.config.poll_seconds,
            accept=self._accept,
            on_event=self._event,
            shadow=self.config.shadow,
            wake_file=self.config.wake_file,
        )
        deployment = self.follower.load_initial()  # no champion: the clearest error first
        self.scorer = OnlineScorer(self.settings, open_store(self.settings))
        for model in (deployment.champion, deployment.challenger):
            if model is not None:
                self._accept(model)
        self.fields = self.scorer.fields
        if self.config.shadow:
            self._start_shadow()
        self.event = event_model(self.settings.usecase)
        self.adapter = TypeAdapter(list[self.event])
        self._published(deployment)
        self.metrics.registry_up.set(1)  # the registry answered the initial load
        self.batcher = Batcher(self._score, self.config.max_rows)
        self.follower.start()

    def _start_shadow(self) -> None:
        from closedloop.serving.shadow import ShadowScorer, start_worker

        channel, process = start_worker(self.settings, self.scorer.keys)
        self.shadow = ShadowScorer(
            lambda: self.follower.deployment,
            channel,
            registry=self.metrics.registry,
            max_pending=self.config.shadow_max_pending,
            process=process,
        )

    def _written(self, paths: list[Any], rows: int) -> None:
        if self.shadow is not None:  # the challenger scores what the log just received
            self.shadow.written(paths, rows)

    def stop(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        if self.writer is not None:
            self.writer.close()  # first: its last flush goes to the shadow worker too
        if self.shadow is not None:
            self.shadow.close()

    # -- model follower hooks ---------------------------------------------------------
    def _accept(self, model: Any) -> None:
        """Refuse a model the service cannot feed; score a probe event with it."""
        if self.scorer is None:
            return
        missing = [c for c in model.feature_names if c not in self.scorer.provided]
        if missing:
            raise ValueError(
                f"{model.name} v{model.version} reads {missing}, which neither this "
                "service's requests, their derived features nor its online store provide"
            )
        if self._probe is not None:
            import pandas as pd

            model.model.predict_proba(pd.DataFrame([self._probe])[model.feature_names])

    def _flushed(self, records: int, ok: bool) -> None:
        self.metrics.log_records.labels("written" if ok else "failed").inc(records)
        self.metrics.log_pending.set(self.writer.pending)

    def _event(self, kind: str, detail: str) -> None:
        m = self.metrics
        if kind == "poll":  # set by every worker's own poll (--workers: /metrics combines)
            m.registry_up.set(1 if detail == "ok" else 0)
        elif kind == "failure":
            m.failures.inc()
        elif kind == "out_of_band":  # recorded in the ledger and alerted by the follower
            m.out_of_band.labels(detail).inc()
        else:
            m.swaps.labels(detail).inc()
            self._published(self.follower.deployment)

    def _published(self, deployment: Any) -> None:
        # remove() rather than clear(): clear() warns whenever Feast has set
        # PROMETHEUS_MULTIPROC_DIR, although our values live in memory (see the imports).
        # Set to 0 first: a worker's file keeps a removed series' last value.
        for labels in self._serving_labels:
            self.metrics.serving.labels(*labels).set(0)
            self.metrics.serving.remove(*labels)
        self._serving_labels = list(deployment.versions().items())
        for alias, version in self._serving_labels:
            self.metrics.serving.labels(alias, version).set(1)

    # -- scoring (on the batcher's thread) -------------------------------------------
    def _score(self, events: list[dict[str, Any]]) -> list[Any]:
        results = self.scorer.score(self.follower.deployment, events)
        self.metrics.batch_rows.observe(len(events))
        if self._probe is None:
            self._probe = next((r["_record"] for r in results if isinstance(r, dict)), None)
        return results
