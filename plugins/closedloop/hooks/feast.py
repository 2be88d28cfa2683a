"""Feast hook: an Airflow connection (optional) -> closedloop settings -> FeatureStore."""

from __future__ import annotations

import json
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from closedloop.core.settings import Settings, load_settings

if TYPE_CHECKING:
    from feast import FeatureStore


class FeastHook(BaseHook):
    """Open the use case's Feast feature store.

    Without a connection the store comes from closedloop's settings (environment and
    ``closedloop.yaml``). A connection of type ``closedloop_feast`` may override settings
    through its extra JSON, e.g. ``{"profile": "production", "home": "/srv/closedloop"}``.

    :param feast_conn_id: connection whose extra JSON overrides settings (optional).
    :param settings_overrides: settings given directly (e.g. ``usecase_file``).
    """

    conn_name_attr = "feast_conn_id"
    default_conn_name = "closedloop_feast_default"
    conn_type = "closedloop_feast"
    hook_name = "Feast (closedloop)"

    def __init__(
        self,
        feast_conn_id: str | None = None,
        settings_overrides: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.feast_conn_id = feast_conn_id
        self.settings_overrides = dict(settings_overrides or {})

    def overrides(self) -> dict[str, Any]:
        """The settings the connection's extra JSON sets."""
        if not self.feast_conn_id:
            return {}
        return json.loads(self.get_connection(self.feast_conn_id).extra or "{}")

    @cached_property
    def settings(self) -> Settings:
        return load_settings(**{**self.overrides(), **self.settings_overrides})

    def get_conn(self) -> FeatureStore:
        from closedloop.core.feature_store import open_store

        return open_store(self.settings)

    def test_connection(self) -> tuple[bool, str]:
        try:
            views = self.get_conn().list_feature_views()
        except Exception as exc:  # the UI shows the message; any failure means "no"
            return False, f"{type(exc).__name__}: {exc}"
        return True, f"Feast project {self.settings.usecase.name}: {len(views)} views"
