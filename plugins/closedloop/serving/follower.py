"""Hot swap: follow the registry's aliases and replace the serving models atomically.

A thread polls the registry every ``poll_seconds`` for the versions behind ``champion``
(and ``challenger`` in an A/B test), and at once when woken: by an MLflow webhook
(``closedloop.serving.webhook``), in this worker or, through a shared file, in another.
When one moved, it loads the new version, checks that
the service can feed it (its columns are served by the feature service or the request
schema) and scores a probe event with it — all off the request path — then publishes a
new :class:`~closedloop.serving.scorer.Deployment` with one reference assignment. A
request holds the deployment it started with, so none is dropped or mixes versions.

If the registry cannot be reached or the new version fails to load or to score, the
current deployment keeps serving; the failure is kept in :attr:`ModelFollower.status`
(``/ready``) and counted in the metrics, and the next poll tries again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from closedloop.core.registry import CHALLENGER, CHAMPION
from closedloop.serving.scorer import Deployment

if TYPE_CHECKING:
    from collections.abc import Callable

    from closedloop.core.registry import LoadedModel
    from closedloop.core.settings import Settings

log = logging.getLogger(__name__)


class ModelFollower:
    """Holds the current :class:`Deployment` and keeps it in step with the registry."""

    def __init__(
        self,
        settings: Settings,
        *,
        challenger_share: float = 0.0,
        poll_seconds: float = 5.0,
        accept: Callable[[LoadedModel], None] | None = None,
        on_event: Callable[[str, str], None] | None = None,
        shadow: bool = False,
        wake_file: str | None = None,
    ) -> None:
        self.settings = settings
        self.challenger_share = challenger_share
        #: the challenger is followed for an A/B split or to be scored in shadow
        self.follows_challenger = challenger_share > 0 or shadow
        self.poll_seconds = poll_seconds
        #: raises if the service cannot serve a model (missing columns, probe fails)
        self.accept = accept or (lambda model: None)
        #: (kind, detail): ("swap", alias), ("failure", message), ("out_of_band", alias)
        #: and, after every poll, ("poll", "ok" or "down")
        self.on_event = on_event or (lambda kind, detail: None)
        self.deployment: Deployment | None = None
        self.status: dict[str, Any] = {"registry_ok": None, "last_error": None, "checked_at": None}
        self._stop = threading.Event()
        self._wake = threading.Event()
        #: a file the service's workers share: an MLflow webhook received by any of
        #: them touches it, and every worker's follower looks at once (serve/webhook.py)
        self.wake_file = wake_file
        self._wake_mtime = self._mtime()
        self._thread: threading.Thread | None = None
        #: the aliases' versions the last comparison with the ledger saw, and whether a
        #: move closedloop was making then needs another look
        self._observed: dict[str, str | None] | None = None
        self._look_again = False

    # -- loading --------------------------------------------------------------------
    def _load(self, alias: str) -> LoadedModel:
        from closedloop.core.registry import load_model

        model = load_model(self.settings, alias)
        self.accept(model)
        return model

    def load_initial(self) -> Deployment:
        """Load the champion (and the challenger if an A/B share is set); the champion is
        required, a missing challenger only disables the split until it appears."""
        champion = self._load(CHAMPION)
        challenger = None
        if self.follows_challenger:
            try:
                challenger = self._load(CHALLENGER)
            except Exception as exc:  # no challenger yet: serve the champion alone
                self._failed(f"challenger not loaded: {exc}")
        self.deployment = Deployment(champion, challenger, self.challenger_share)
        return self.deployment

    def check(self) -> bool:
        """One poll: swap in whatever moved. Returns whether the deployment changed."""
        from closedloop.core.registry import alias_version, client_for

        current = self.deployment
        assert current is not None, "load_initial first"
        try:
            client = client_for(self.settings)
            wanted = {CHAMPION: alias_version(client, self.settings.model_name, CHAMPION)}
            if self.follows_challenger:
                wanted[CHALLENGER] = alias_version(client, self.settings.model_name, CHALLENGER)
        except Exception as exc:
            return self._failed(f"registry unreachable: {type(exc).__name__}: {exc}")
        self.status.update(registry_ok=True, checked_at=time.time())
        self._watch(client, wanted)
        have = current.versions()
        if wanted.get(CHAMPION) is None:
            return self._failed("the registry has no champion any more; keeping the current one")
        moved = [a for a, v in wanted.items() if v is not None and have.get(a) != v]
        # the challenger alias was removed (promoted or withdrawn): the split stops
        dropped = CHALLENGER in wanted and wanted[CHALLENGER] is None and CHALLENGER in have
        if not moved and not dropped:
            self.status["last_error"] = None
            return False
        loaded = {}
        for alias in moved:
            try:
                loaded[alias] = self._load(alias)
            except Exception as exc:
                return self._failed(
                    f"loading {alias} v{wanted[alias]} failed, still serving "
                    f"{have}: {type(exc).__name__}: {exc}",
                    registry_ok=True,
                )
        self.deployment = Deployment(
            loaded.get(CHAMPION, current.champion),
            None if dropped else loaded.get(CHALLENGER, current.challenger),
            self.challenger_share,
        )
        self.status["last_error"] = None
        for alias, model in loaded.items():
            log.info("now serving %s v%s as %s", model.name, model.version, alias)
            self.on_event("swap", alias)
        if dropped:
            log.info("no challenger in the registry any more: the champion takes all keys")
            self.on_event("swap", CHALLENGER)
        return True

    def _watch(self, client: Any, observed: dict[str, str | None]) -> None:
        """Compare the aliases with the ledger when they moved since the last look
        (:mod:`closedloop.core.alias_watch`): a move made outside closedloop is recorded
        and alerted within one poll."""
        from closedloop.core.alias_watch import check_aliases

        if observed == self._observed and not self._look_again:
            return
        try:
            found = check_aliases(self.settings, observed=observed, client=client)
        except Exception as exc:  # looked at again on the next poll
            log.warning("could not compare the aliases with the ledger: %s", exc)
            return
        self._observed, self._look_again = dict(observed), bool(found.in_flight)
        for entry in found.recorded:
            self.on_event("out_of_band", entry.alias)

    def _failed(self, message: str, *, registry_ok: bool = False) -> bool:
        log.warning("%s", message)
        self.status.update(registry_ok=registry_ok, last_error=message, checked_at=time.time())
        self.on_event("failure", message)
        return False

    # -- the polling thread -----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wake(self) -> None:
        """Look at the registry now (an MLflow webhook said an alias moved), in this
        process and, through :attr:`wake_file`, in the service's other workers."""
        if self.wake_file is not None:
            Path(self.wake_file).touch()
        self._wake.set()

    def _mtime(self) -> int:
        try:
            return os.stat(self.wake_file).st_mtime_ns if self.wake_file else 0
        except FileNotFoundError:
            return 0

    #: how often a worker looks at the shared wake file (a stat call)
    WAKE_FILE_SECONDS = 0.1

    def _run(self) -> None:
        due = time.monotonic() + self.poll_seconds
        step = self.WAKE_FILE_SECONDS if self.wake_file else self.poll_seconds
        while True:
            woken = self._wake.wait(min(step, max(0.0, due - time.monotonic())))
            if self._stop.is_set():
                return
            self._wake.clear()
            mtime = self._mtime()
            touched, self._wake_mtime = mtime != self._wake_mtime, mtime
            if not (woken or touched or time.monotonic() >= due):
                continue
            due = time.monotonic() + self.poll_seconds
            try:
                self.check()
            except Exception as exc:  # never let the thread die
                self._failed(f"unexpected: {type(exc).__name__}: {exc}")
            self.on_event("poll", "ok" if self.status["registry_ok"] else "down")
