"""Feast, configured from closedloop's settings.

closedloop does not read ``feature_store.yaml``: it builds the ``RepoConfig`` from its
settings, so a profile switch (SQLite + file registry -> Redis + SQL registry) changes
URLs only. Feast is imported lazily — it costs seconds and resets warning filters.
"""

from __future__ import annotations

import logging
from datetime import UTC
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datetime import datetime

    from feast import FeatureStore

    from closedloop.core.settings import Settings


log = logging.getLogger(__name__)


class _DeliberateSetting(logging.Filter):
    """Feast advises against ``serve_features_while_materializing`` with a file registry
    or a threaded cache at every ``RepoConfig``; both profiles set it on purpose (see
    ``Settings.feast_registry``; tests/integration/test_feature_pipeline.py shows it
    takes effect with the file registry)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("`serve_features_while_materializing` is enabled")


logging.getLogger("feast.repo_config").addFilter(_DeliberateSetting())

#: passes over an interval while the online store's server keeps restarting under it
MATERIALIZE_PASSES = 3

#: rows per online-store write while materializing. Feast's default (None) converts an
#: interval's rows to protobufs all at once: 1M events took 12 GB (benchmarks/scale.py).
ONLINE_WRITE_BATCH = 10_000


def repo_config(settings: Settings) -> Any:
    """Feast's configuration for ``settings``: the profile's registry and online store;
    the file offline store and the local engine, or with ``compute: spark`` Feast's Spark
    offline store and Spark compute engine (:mod:`closedloop.core.spark`)."""
    from feast.repo_config import RepoConfig

    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    compute: dict[str, Any] = {"offline_store": {"type": "file"}}
    if settings.compute == "spark":
        from closedloop.core import spark

        spark.prepare_environment(settings)
        compute = {
            "offline_store": spark.offline_store_config(settings),
            "batch_engine": spark.engine_config(settings),
        }
    return RepoConfig(
        project=settings.usecase.name,
        provider="local",
        registry=settings.feast_registry,
        online_store=settings.feast_online_store,
        entity_key_serialization_version=3,
        materialization_config={"online_write_batch_size": ONLINE_WRITE_BATCH},
        repo_path=settings.feature_repo,
        **compute,
    )


def open_store(settings: Settings) -> FeatureStore:
    """A ``FeatureStore`` for the settings' profile and the use case's repository."""
    from feast import FeatureStore

    return FeatureStore(config=repo_config(settings), repo_path=str(settings.feature_repo))


def apply_definitions(store: FeatureStore, settings: Settings) -> dict[str, list[str]]:
    """Register the use case's Feast objects, generated from its declaration
    (:mod:`closedloop.core.feast_objects`), and remove the ones it no longer declares."""
    from feast.repo_operations import extract_objects_for_apply_delete

    from closedloop.core.feast_objects import repo_contents

    repo = repo_contents(settings.usecase, settings)
    _drop_sources_of_another_kind(store, repo.data_sources)
    to_apply, to_delete, _, _ = extract_objects_for_apply_delete(
        store.project, store.registry, repo
    )
    store.apply(to_apply, objects_to_delete=to_delete, partial=False)
    return {
        "applied": sorted(o.name for o in to_apply),
        "deleted": sorted(o.name for o in to_delete),
        "feature_views": sorted(fv.name for fv in repo.feature_views),
        "feature_services": sorted(fs.name for fs in repo.feature_services),
    }


def _drop_sources_of_another_kind(store: FeatureStore, sources: list[Any]) -> list[str]:
    """Delete the registered data sources that ``sources`` redeclare as another kind (a
    file source that ``compute: spark`` declares as a Spark source, or back), so that
    they are applied anew. Feast 0.67's SQL registry reads the stored source with the
    new one's class to compare them, which fails on another kind: switching the compute
    of a production registry failed at ``feast_apply``."""
    stored = {s.name: type(s) for s in store.list_data_sources()}
    changed = [s.name for s in sources if stored.get(s.name, type(s)) is not type(s)]
    for name in changed:
        store.registry.delete_data_source(name, store.project)
    if changed:
        log.info("re-registering %s as %s", changed, type(sources[0]).__name__)
    return changed


def materialize_interval(store: FeatureStore, start: datetime, end: datetime) -> list[str]:
    """Load every online feature view's rows stamped in ``[start, end]`` into the online
    store. Explicit intervals, not ``materialize_incremental``: a backfill of past days
    must load those days (Feast's ``materialize_incremental`` starts at now - TTL).

    One view at a time: a run killed between two views leaves some views of the interval
    in the online store and not others, and the retry loads them all again (the online
    store keeps a row only if it is newer than the one it has, so the rows of the views
    already written are left as they are).

    Out of order: an interval older than one a view already holds is loaded together with
    everything after it, up to the newest end loaded. Feast's SQLite online store writes
    every row it is given (its Redis store skips a row not newer than the stored one), so
    the older interval alone would put older values over newer ones; over the longer range
    Feast writes each entity's newest row.

    Restarts: if the online store's server restarted while the interval was written (see
    :func:`online_store_server`), what was written before may be gone with it -- a Redis
    without persistence keeps nothing -- while Feast's client reconnected and wrote the
    rest. The interval is then loaded again, up to ``MATERIALIZE_PASSES`` times in all,
    after which :class:`~closedloop.core.errors.OnlineStoreRestartedError` (retryable)
    is raised.
    """
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    spark_started(store)
    from closedloop.core import failpoints
    from closedloop.core.errors import OnlineStoreRestartedError

    views = [fv for fv in store.list_feature_views() if fv.online]
    for _ in range(MATERIALIZE_PASSES):
        server = online_store_server(store)
        for done, view in enumerate(views, 1):
            upto = max(end, view.most_recent_end_time or end)
            store.materialize(start_date=start, end_date=upto, feature_views=[view.name])
            if done < len(views):
                failpoints.hold("materialize.view_written")
        if online_store_server(store) == server:
            return [view.name for view in views]
        log.warning(
            "The online store's server restarted while [%s, %s] was written; loading it "
            "again. Without persistence it lost every earlier interval too: materialize "
            "them again.",
            start,
            end,
        )
    raise OnlineStoreRestartedError(
        f"the online store's server restarted during each of {MATERIALIZE_PASSES} passes "
        f"over [{start}, {end}]"
    )


def spark_started(store: FeatureStore) -> None:
    """With Feast's Spark offline store, start the process's Spark session from the
    store's ``spark_conf`` (a no-op when one is active or the store is another). Feast
    0.67's Spark engine builds a missing session from its whole configuration instead of
    its ``spark_conf``: a materialization that came first ran on Spark's defaults
    (``local[*]``, the JVM's time zone)."""
    config = store.config.offline_store
    if getattr(config, "type", None) != "spark":
        return
    from feast.infra.offline_stores.contrib.spark_offline_store.spark import (
        get_spark_session_or_start_new_with_repoconfig,
    )

    get_spark_session_or_start_new_with_repoconfig(config)


def online_store_server(store: FeatureStore) -> str | None:
    """Which server process holds the online store: a Redis server's ``run_id``, new on
    every start (the ids of every node for a cluster); None for SQLite, which has none."""
    config = store.config.online_store
    if getattr(config, "type", None) != "redis":
        return None
    from feast.infra.online_stores.redis import RedisOnlineStore

    # Feast's own client for its configuration (host, db, password, TLS, sentinel), so
    # both reach the same server; a fresh one, closed after the question.
    client = RedisOnlineStore()._get_client(config)
    try:
        info = client.info("server")
    finally:
        client.close()
    if "run_id" in info:
        return str(info["run_id"])
    return ",".join(sorted(str(node.get("run_id")) for node in info.values()))


_ROW_ID = "__closedloop_row"


def feature_refs(store: FeatureStore, features: Any) -> list[str]:
    """``view:feature`` references of a feature service (by object or name) or a list."""
    if isinstance(features, str):
        features = store.get_feature_service(features)
    if isinstance(features, list):
        return list(features)
    return [
        f"{proj.name_to_use()}:{f.name}"
        for proj in features.feature_view_projections
        for f in proj.features
    ]


def historical_features(store: FeatureStore, entity_df: Any, features: Any) -> Any:
    """Point-in-time correct features for every row of ``entity_df``, in its order.

    Written by hand on top of ``get_historical_features`` because Feast 0.67's file
    (dask) offline store loses entity rows in two ways, silently:

    * it drops an entity row whose key has feature rows that are *all* newer than the
      row's timestamp (or all older than the TTL): its left join is followed by a
      timestamp filter that removes the only matching rows, and the row then vanishes
      for every view;
    * it keeps one row per view join key and entity timestamp (``drop_duplicates`` on
      them after the join), so of two entity rows with the same key and timestamp for a
      view — two events of one entity in the same second — only one survives.

    A missing value must stay a missing value and a present one present, so each view
    is joined separately, on the distinct (join keys, timestamp) pairs of the entity
    rows, tagged; every entity row then takes the features of its pair, and what Feast
    dropped comes back as nulls for that view only.
    """
    spark_started(store)
    frame = entity_df.reset_index(drop=True)
    ts = _entity_timestamp(frame)
    out = frame
    for view_name, refs in refs_by_view(feature_refs(store, features)).items():
        keys = join_keys(store.get_feature_view(view_name))
        pairs = frame[[*keys, ts]].drop_duplicates(ignore_index=True)
        tagged = pairs.assign(**{_ROW_ID: range(len(pairs))})
        got = store.get_historical_features(entity_df=tagged, features=refs).to_df()
        if got[_ROW_ID].duplicated().any():
            raise RuntimeError(f"Feast returned more than one row per entity row for {refs}")
        names = [r.split(":", 1)[1] for r in refs]
        found = tagged.merge(got[[_ROW_ID, *names]], on=_ROW_ID, how="left", validate="one_to_one")
        out = out.merge(
            found.drop(columns=_ROW_ID), on=[*keys, ts], how="left", validate="many_to_one"
        )
    return out


def refs_by_view(refs: list[str]) -> dict[str, list[str]]:
    """``view:feature`` references by view, the views and each one's features in the
    order of ``refs``."""
    by_view: dict[str, list[str]] = {}
    for ref in refs:
        by_view.setdefault(ref.split(":", 1)[0], []).append(ref)
    return by_view


def join_keys(view: Any) -> list[str]:
    """The entity rows' columns a feature view is joined on (its projection's names)."""
    return [view.projection.join_key_map.get(c.name, c.name) for c in view.entity_columns]


def _entity_timestamp(entity_df: Any) -> str:
    """The entity rows' timestamp column, found as Feast finds it."""
    if "event_timestamp" in entity_df.columns:
        return "event_timestamp"
    import pandas as pd

    times = [c for c in entity_df.columns if pd.api.types.is_datetime64_any_dtype(entity_df[c])]
    if len(times) != 1:
        raise ValueError(f"entity rows need one timestamp column, found {times}")
    return times[0]


def online_lookup(settings: Settings, keys: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The online features of every view keyed by one of ``keys`` (join key -> value),
    by view; a key no view is keyed by is a ValueError naming the declared keys. A value
    the store does not hold comes back as None, with the declared default beside it."""
    usecase = settings.usecase
    declared = usecase.entity_keys
    unknown = sorted(set(keys) - set(declared))
    if unknown:
        raise ValueError(f"{unknown} are not entity keys of {usecase.name}; declared: {declared}")
    store = open_store(settings)
    out: dict[str, dict[str, Any]] = {}
    for view in store.list_feature_views():
        key = view.entity_columns[0].name
        if key not in keys:
            continue
        names = [f.name for f in view.features]
        value = _typed_key(usecase, key, keys[key])
        answer = store.get_online_features(
            features=[f"{view.name}:{n}" for n in names], entity_rows=[{key: value}]
        ).to_dict()
        found = {n: answer[n][0] for n in names}
        if all(v is None for v in found.values()):
            defaults = {n: usecase.defaults.get(n) for n in names}
            found = {"found": False, "defaults": defaults}
        out[view.name] = {key: value, **found}
    return out


def _typed_key(usecase: Any, key: str, value: str) -> Any:
    """A key given as text, typed as its column is declared (Feast matches types)."""
    if usecase.columns[key].type == "int":
        return int(value)
    return value
