"""Lookup and predict: the work of one ``/predict`` call, without HTTP.

:class:`OnlineScorer` turns events, as a request declares them (the use case's
``request_columns``), into scored predictions: the derived features computed from the
event's own columns by the definitions the feature pipeline uses
(:mod:`closedloop.core.derive`), the entity aggregates from one ``get_online_features``
call for every event of the call, the use case's declared defaults where the store has
no value (as the training set and batch inference do), then ``predict_proba`` of the
arm's model. Calls are made for many events at once by the server's batcher, which is
why this works on lists.

Unknown-entity policy: an aggregate *with* a declared default that the online store
lacks (an entity without history) gets the default and is named in the prediction's
``defaults_used``; one *without* a default makes the event unanswerable — the server
answers 404 naming the key, never a guess.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from closedloop.core.ab import arm_for
from closedloop.core.fast_pipeline import FastPipeline
from closedloop.core.registry import CHALLENGER, CHAMPION
from closedloop.core.usecase import EVENT_VIEW

if TYPE_CHECKING:
    from feast import FeatureStore

    from closedloop.core.registry import LoadedModel
    from closedloop.core.settings import Settings

SOURCE = "online"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deployment:
    """What serves now: the champion and, in an A/B test, the challenger with its share
    of keys. Replaced whole on a swap, never mutated, so a call sees one consistent set."""

    champion: LoadedModel
    challenger: LoadedModel | None = None
    challenger_share: float = 0.0

    def model_for(self, key: str) -> LoadedModel:
        if self.challenger is None or self.challenger_share <= 0.0:
            return self.champion
        arm = arm_for(key, self.challenger_share)
        return self.challenger if arm == CHALLENGER else self.champion

    def versions(self) -> dict[str, str]:
        out = {CHAMPION: self.champion.version}
        if self.challenger is not None:
            out[CHALLENGER] = self.challenger.version
        return out


class UnknownEntityError(LookupError):
    """An event whose aggregates have no value and no declared default."""

    def __init__(self, key: str, value: str, view: str, features: list[str]) -> None:
        super().__init__(
            f"unknown {key} {value!r}: the online store has no {view} features for it "
            f"({', '.join(features[:4])}{', ...' if len(features) > 4 else ''}) and they have "
            "no declared default"
        )
        self.key, self.value = key, value


class OnlineScorer:
    """Request columns + online aggregates + a :class:`Deployment` -> predictions (see
    the module)."""

    def __init__(self, settings: Settings, store: FeatureStore) -> None:
        from closedloop.core.feature_store import feature_refs

        usecase = settings.usecase
        self.usecase = usecase
        self.store = store
        service = store.get_feature_service(usecase.feature_service)
        # the event's own features come with the request, not from the store
        self.refs = [r for r in feature_refs(store, service) if r.split(":")[0] != EVENT_VIEW]
        self.fields = list(usecase.request_columns)
        self.keys = list(usecase.entity_keys)  # the id and the join keys, logged
        self.lookup_keys = [usecase.entities[e].join_key for e in usecase.features.aggregations]
        self.id_column = usecase.batch.id_column
        self.response_id = usecase.response_id
        self.times = [c for c in self.fields if usecase.columns[c].type in ("date", "timestamp")]
        self.defaults = {k: v for k, v in usecase.defaults.items() if k in self.served_features}
        self._fast: dict[int, tuple[LoadedModel, FastPipeline | None]] = {}
        #: the use case's declared categories: the fast path encodes all of them ahead
        self.categories = {
            name: list(spec.categories or ())
            for name, spec in usecase.columns.items()
            if spec.type == "category"
        }
        # feature -> (view, the view's join key), to name the key of an unknown entity
        self._owner: dict[str, tuple[str, str]] = {}
        for proj in service.feature_view_projections:
            view = store.get_feature_view(proj.name)
            join_key = view.join_keys[0] if view.join_keys else proj.name
            for f in proj.features:
                self._owner[f.name] = (proj.name_to_use(), join_key)

    @property
    def served_features(self) -> list[str]:
        """The features the online store provides: the entity aggregates."""
        return [r.split(":", 1)[1] for r in self.refs]

    @property
    def provided(self) -> set[str]:
        """Every feature this scorer can give a model."""
        return {*self.fields, *self.usecase.features.derived, *self.served_features}

    def lookup(self, events: list[dict[str, Any]]) -> tuple[dict[str, list[Any]], list[Any]]:
        """Columns of features for ``events`` (defaults filled in), and per event either
        the list of defaulted features or an :class:`UnknownEntityError`."""
        columns = {name: [e[name] for e in events] for name in self.fields}
        columns.update(self.derived(columns))
        status: list[Any] = [[] for _ in events]
        if not self.refs:
            return columns, status
        rows = [{k: e[k] for k in self.lookup_keys} for e in events]
        found = self.store.get_online_features(features=self.refs, entity_rows=rows).to_dict()
        for name in self.served_features:
            values = columns[name] = found[name]
            for i, value in enumerate(values):
                if value is not None:
                    continue
                if name in self.defaults:
                    values[i] = self.defaults[name]
                    if isinstance(status[i], list):
                        status[i].append(name)
                elif isinstance(status[i], list):
                    view, key = self._owner[name]
                    missing = [
                        n for n in self.served_features
                        if self._owner[n][0] == view and n not in self.defaults
                    ]  # fmt: skip
                    status[i] = UnknownEntityError(key, str(events[i].get(key)), view, missing)
        return columns, status

    def derived(self, columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """The declared row-level features of the request's events, computed as the
        feature pipeline computes them (dates and timestamps in UTC, as in batches)."""
        from closedloop.core.derive import derive_columns

        return derive_columns(columns, self.usecase.features.derived, self.times)

    def score(self, deployment: Deployment, events: list[dict[str, Any]]) -> list[Any]:
        """Per event a prediction dict (with its log record under ``"_record"``) or an
        :class:`UnknownEntityError`."""
        columns, status = self.lookup(events)
        now = datetime.now(UTC)
        out: list[Any] = list(status)
        groups: dict[int, tuple[LoadedModel, list[int]]] = {}
        for i, event in enumerate(events):
            if isinstance(status[i], Exception):
                continue
            model = deployment.model_for(str(event[self.id_column]))
            groups.setdefault(id(model), (model, []))[1].append(i)
        for model, index in groups.values():
            scores = self.predict(model, columns, index)
            used = [c for c in model.feature_names if c not in self.keys]
            for i, score in zip(index, scores.tolist(), strict=True):
                decision = int(score >= model.threshold)
                pid = uuid.uuid4().hex[:20]
                record = {
                    "prediction_id": pid,
                    "source": SOURCE,
                    "predicted_at": now,
                    "model_name": model.name,
                    "model_version": model.version,
                    "arm": model.alias,
                    "score": score,
                    "decision": decision,
                    **{k: columns[k][i] for k in self.keys},
                    **{c: columns[c][i] for c in used},
                }
                out[i] = {
                    "prediction_id": pid,
                    self.response_id: str(events[i][self.id_column]),
                    "probability": score,
                    "decision": decision,
                    "threshold": model.threshold,
                    "model_name": model.name,
                    "model_version": model.version,
                    "arm": model.alias,
                    "defaults_used": status[i],
                    "_record": record,
                }
        return out

    def predict(self, model: LoadedModel, columns: dict[str, list[Any]], rows: list[int]) -> Any:
        """The probabilities of ``rows``: by :class:`FastPipeline` once it has given the
        pipeline's own answer on this model's first rows, else by the pipeline."""
        entry = self._fast.get(id(model))
        if entry is None:  # the first call with this model decides
            entry = (model, self._check_fast(model, columns, rows))
            self._fast[id(model)] = entry  # the entry keeps the model, so the id stays its
            while len(self._fast) > 4:  # models swapped out long ago
                del self._fast[next(iter(self._fast))]
        if entry[1] is not None:
            return entry[1].predict_proba(columns, rows)[:, 1]
        frame = pd.DataFrame({c: [columns[c][i] for i in rows] for c in model.feature_names})
        return model.model.predict_proba(frame)[:, 1]

    def _check_fast(
        self, model: LoadedModel, columns: dict[str, list[Any]], rows: list[int]
    ) -> FastPipeline | None:
        try:
            fast = FastPipeline(model.model)
        except TypeError as exc:
            log.info("%s v%s scores through its pipeline: %s", model.name, model.version, exc)
            return None
        frame = pd.DataFrame({c: [columns[c][i] for i in rows] for c in model.feature_names})
        want = model.model.predict_proba(frame)
        fast.remember(self.categories)
        if not np.array_equal(fast.predict_proba(columns, rows), want):
            log.warning(
                "%s v%s: the fast path differs, using the pipeline", model.name, model.version
            )
            return None
        return fast
