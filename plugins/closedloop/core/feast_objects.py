"""The Feast objects of a use case, generated from its declaration.

One Feast project per use case (named after it), holding:

* an entity per declared entity, plus ``event`` keyed by the event id;
* a source per offline table: ``events`` (stamped at the event time) and
  ``<entity>_aggregates`` (stamped at the end of the interval they were computed for),
  a file source or, with ``compute: spark``, a Spark source of the same Parquet folder;
* the feature views ``event_features`` (the event's passed-through and derived
  features) and ``<entity>_aggregates`` (the declared aggregates);
* the feature service ``<model>_v<version>`` with every model feature.

``feature_repo/`` holds a module that exposes these objects to the Feast CLI;
closedloop itself applies them through :func:`repo_contents`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from closedloop.core.usecase import (
    AGGREGATE_TS,
    EVENT_ENTITY,
    EVENT_TABLE,
    EVENT_VIEW,
    expression_names,
    parse_duration,
)

if TYPE_CHECKING:
    from closedloop.core.settings import Settings
    from closedloop.core.usecase import UseCase

#: how long an aggregate row stays valid when a window is ``all`` and no ``features.ttl``
#: is declared: an entity silent for longer gets the declared defaults
DEFAULT_TTL = timedelta(days=365)


def feature_kind(usecase: UseCase, name: str) -> str:
    """``int``, ``float`` or ``string``: the type of a model feature or declared column."""
    if name in usecase.columns:
        kind = usecase.columns[name].type
        return kind if kind in ("int", "float") else "string"
    derived = usecase.features.derived.get(name)
    if derived is not None:
        if derived.expr is None:
            return "int"
        if "/" in derived.expr:
            return "float"
        kinds = {feature_kind(usecase, n) for n in expression_names(derived.expr)}
        return "int" if kinds <= {"int"} and "." not in derived.expr else "float"
    return usecase.aggregate_features[name].dtype


def aggregate_ttl(usecase: UseCase, entity: str) -> timedelta:
    """An aggregate row's validity: the declared ``features.ttl``, else the longest window
    plus one interval (an expired window emits a row, so the value is exact), else
    :data:`DEFAULT_TTL` for ``all`` windows."""
    if usecase.features.ttl:
        return parse_duration(usecase.features.ttl)
    windows = [a.window_length for a in usecase.features.aggregations[entity].values()]
    if any(w is None for w in windows):
        return DEFAULT_TTL
    return max(windows) + usecase.interval


def feast_objects(usecase: UseCase, settings: Settings) -> dict[str, Any]:
    """name -> Feast object, for every object of the use case's project."""
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64, String

    types = {"int": Int64, "float": Float64, "string": String}
    value_types = {"int": ValueType.INT64, "float": ValueType.DOUBLE, "string": ValueType.STRING}

    def fields(names: list[str]) -> list[Any]:
        return [Field(name=n, dtype=types[feature_kind(usecase, n)]) for n in names]

    objects: dict[str, Any] = {}
    id_column = usecase.batch.id_column
    event = Entity(
        name=EVENT_ENTITY,
        join_keys=[id_column],
        value_type=value_types[feature_kind(usecase, id_column)],
        description=f"One event of {usecase.name}, keyed by {id_column}.",
    )
    objects[EVENT_ENTITY] = event
    entities = {}
    for name, spec in usecase.entities.items():
        entities[name] = Entity(
            name=name,
            join_keys=[spec.join_key],
            value_type=value_types[feature_kind(usecase, spec.join_key)],
            description=spec.description,
        )
    objects.update(entities)

    def table_source(**kwargs: Any) -> Any:
        if settings.compute == "spark":
            from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import (
                SparkSource,
            )

            return SparkSource(file_format="parquet", **kwargs)
        return FileSource(**kwargs)

    event_source = table_source(
        name=f"{EVENT_TABLE}_source",
        path=str(settings.offline_table_dir(EVENT_TABLE)),
        timestamp_field=usecase.batch.timestamp_column,
        description="Validated, cleaned events with derived features (labels included).",
    )
    views = [
        FeatureView(
            name=EVENT_VIEW,
            entities=[event],
            ttl=DEFAULT_TTL,
            # a key declared as a feature comes with every entity row, not from a view
            schema=fields([f for f in usecase.event_features if f not in usecase.entity_keys]),
            source=event_source,
            online=True,
            tags={"owner": "closedloop", "usecase": usecase.name},
        )
    ]
    objects[event_source.name] = event_source
    for entity, table in usecase.aggregate_tables.items():
        source = table_source(
            name=f"{table}_source",
            path=str(settings.offline_table_dir(table)),
            timestamp_field=AGGREGATE_TS,
            description=f"Aggregates per {entity}, stamped at the end of each interval.",
        )
        objects[source.name] = source
        views.append(
            FeatureView(
                name=table,
                entities=[entities[entity]],
                ttl=aggregate_ttl(usecase, entity),
                schema=fields(list(usecase.features.aggregations[entity])),
                source=source,
                online=True,
                tags={"owner": "closedloop", "usecase": usecase.name},
            )
        )
    objects.update({view.name: view for view in views})
    service = FeatureService(
        name=usecase.feature_service,
        features=views,
        description=f"Every feature of {usecase.model_name}, version {usecase.features.version}.",
        tags={"model": usecase.model_name, "usecase": usecase.name},
    )
    objects[service.name] = service
    return objects


def repo_contents(usecase: UseCase, settings: Settings) -> Any:
    """The objects as Feast's ``RepoContents`` (what ``feast apply`` would parse)."""
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource
    from feast.repo_contents import RepoContents

    objects = list(feast_objects(usecase, settings).values())

    def of(kind: type) -> list[Any]:
        return [o for o in objects if isinstance(o, kind)]

    return RepoContents(
        projects=[],
        data_sources=of(DataSource),
        feature_views=of(FeatureView),
        on_demand_feature_views=[],
        stream_feature_views=[],
        label_views=[],
        entities=of(Entity),
        feature_services=of(FeatureService),
        permissions=[],
    )
