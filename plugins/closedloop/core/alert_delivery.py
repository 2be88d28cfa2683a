"""Delivery of :class:`~closedloop.core.alerts.Alert` s to the configured webhooks.

:func:`deliver` never raises. Each webhook gets a few attempts with a doubling backoff;
an alert that still cannot be delivered is logged (WARNING, naming the target and the
error) and kept in the durable :class:`Outbox` under ``<home>/alerts/outbox/``, one file
per alert and target. Every later delivery first retries what the outbox holds, oldest
first; a delivered entry leaves it. An entry is claimed by an atomic rename before it is
sent, so two processes never send the same one; a claim left by a dead process is
released after :data:`STALE_CLAIM_SECONDS`. Delivery is at least once. Webhook URLs are
secrets: the outbox stores a digest of the URL, logs show only its scheme and host.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from closedloop.core.alerts import now_iso

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from closedloop.core.alerts import Alert
    from closedloop.core.settings import AlertSettings, Settings


log = logging.getLogger(__name__)

#: a claimed outbox entry whose claim is older than this belongs to a dead process
STALE_CLAIM_SECONDS = 600.0


# -- delivery ------------------------------------------------------------------------


@dataclass
class Delivery:
    """What :func:`deliver` did (targets named by scheme and host only)."""

    #: targets the alert reached
    sent: list[str] = field(default_factory=list)
    #: targets it waits for in the outbox
    queued: list[str] = field(default_factory=list)
    #: entries of the outbox delivered before it
    flushed: int = 0
    #: why nothing was sent, when nothing was
    skipped: str | None = None


def wanted(alert: Alert, config: AlertSettings) -> bool:
    """Whether the configuration asks for alerts of this event."""
    return alert.event in config.events


def outbox_dir(settings: Settings) -> Path:
    return settings.home / "alerts" / "outbox"


def deliver(alert: Alert, settings: Settings) -> Delivery:
    """Send ``alert`` to every configured webhook, after what the outbox holds. Never
    raises: what cannot be delivered is logged and kept in the outbox."""
    config = settings.alerts
    if not wanted(alert, config):
        return Delivery(skipped=f"event {alert.event!r} is not in alerts.events")
    targets = {_target_id(url): url for url in (s.get_secret_value() for s in config.webhooks)}
    if not targets:
        log.debug("no alert webhooks configured: %s", alert.text)
        return Delivery(skipped="no webhooks configured")
    done = Delivery()
    outbox = Outbox(outbox_dir(settings))
    try:
        done.flushed, failed = _flush(outbox, targets, config)
    except Exception:
        log.warning("the alert outbox %s could not be retried", outbox_dir(settings), exc_info=True)
        failed = {}
    body = _encode(alert.message())
    for target_id, url in targets.items():
        name = target_name(url)
        error = failed.get(target_id) or _send(url, body, config)
        if error is None:
            done.sent.append(name)
            continue
        log.warning(
            "alert %s (%s, %s) not delivered to %s: %s; kept in the alert outbox %s",
            alert.id,
            alert.event,
            alert.usecase,
            name,
            error,
            outbox_dir(settings),
        )
        try:
            outbox.put(alert.message(), target_id, name, error)
            done.queued.append(name)
        except Exception:
            log.warning(
                "alert %s could not be written to the alert outbox %s either; it is lost: %s",
                alert.id,
                outbox_dir(settings),
                alert.text,
                exc_info=True,
            )
    return done


def _flush(
    outbox: Outbox, targets: Mapping[str, str], config: AlertSettings
) -> tuple[int, dict[str, str]]:
    """Deliver the outbox's entries, oldest first, one attempt each; a target that fails
    is not tried again in this pass. Returns the entries delivered and target id ->
    error of the targets that failed."""
    outbox.release_stale()
    delivered, failed = 0, {}
    unknown = 0
    for entry in outbox.entries():
        target_id = Outbox.target_of(entry)
        if target_id in failed:
            continue
        if target_id not in targets:
            unknown += 1
            continue
        claimed = outbox.claim(entry)
        if claimed is None:  # another process has it
            continue
        try:
            record = json.loads(claimed.read_text())
            body = _encode(record["message"])
        except (OSError, ValueError, KeyError) as exc:
            log.warning("alert outbox entry %s is unreadable (%s): set aside", entry.name, exc)
            outbox.set_aside(claimed, entry)
            continue
        name = target_name(targets[target_id])
        error = _send(targets[target_id], body, config, retries=0)
        if error is None:
            claimed.unlink(missing_ok=True)
            delivered += 1
            continue
        failed[target_id] = f"not attempted: a queued alert to it failed just now ({error})"
        log.warning(
            "queued alert %s still not delivered to %s: %s",
            record["message"].get("id"),
            name,
            error,
        )
        outbox.release(claimed, entry, record, error)
    if unknown:
        log.warning(
            "%d alerts in the outbox %s are for webhooks no longer configured: kept",
            unknown,
            outbox.folder,
        )
    if delivered:
        log.info("delivered %d queued alerts from the outbox %s", delivered, outbox.folder)
    return delivered, failed


class _Failed(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def _post(url: str, body: bytes, timeout: float) -> None:
    if urlsplit(url).scheme not in ("http", "https"):
        raise _Failed("not an http(s) URL", retryable=False)
    request = Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "closedloop-alerts"},
    )
    try:
        with urlopen(request, timeout=timeout) as response:
            response.read()
    except HTTPError as exc:
        exc.close()
        retryable = exc.code >= 500 or exc.code in (408, 429)
        raise _Failed(f"HTTP {exc.code} {exc.reason}", retryable=retryable) from None
    except (URLError, OSError) as exc:  # refused, unreachable, timed out, reset
        reason = getattr(exc, "reason", exc)
        raise _Failed(f"{type(exc).__name__}: {reason}", retryable=True) from None


def _send(
    url: str, body: bytes, config: AlertSettings, *, retries: int | None = None
) -> str | None:
    """POST with retries and a doubling backoff; None when delivered, else the error."""
    attempts = 1 + (config.retries if retries is None else retries)
    error = "not attempted"
    for attempt in range(attempts):
        try:
            _post(url, body, config.timeout_seconds)
            return None
        except _Failed as exc:
            error = str(exc)
            if not exc.retryable or attempt == attempts - 1:
                return f"{error} (after {attempt + 1} attempts)"
            log.info("alert to %s failed (%s): retrying", target_name(url), error)
            time.sleep(config.backoff_seconds * 2**attempt)
    return error


def _encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, sort_keys=True).encode()


def _target_id(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def target_name(url: str) -> str:
    """A webhook as logs show it: scheme, host and port (the path may hold a token)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


# -- the outbox ----------------------------------------------------------------------


class Outbox:
    """Undelivered alerts, one JSON file per alert and target:
    ``<ns since epoch>-<alert id>-<target id>.json`` (names sort oldest first).

    Writes go to a temporary file renamed into place; a process claims an entry by
    renaming it to ``<entry>.claim-<pid>-<token>`` (only one rename of a file can
    succeed) and, after a failed attempt, renames it back with its record updated."""

    SUFFIX = ".json"
    CLAIM = ".claim-"

    def __init__(self, folder: Path, stale_after: float = STALE_CLAIM_SECONDS) -> None:
        self.folder = Path(folder)
        self.stale_after = stale_after

    def entries(self) -> list[Path]:
        """The entries not claimed now, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.name.endswith(self.SUFFIX))

    def count(self) -> int:
        if not self.folder.is_dir():
            return 0
        return sum(1 for p in self.folder.iterdir() if p.name.endswith(self.SUFFIX))

    def messages(self) -> list[dict[str, Any]]:
        """The queued messages (entries claimed right now excepted)."""
        found = []
        for path in self.entries():
            with contextlib.suppress(OSError, ValueError):
                found.append(json.loads(path.read_text())["message"])
        return found

    @staticmethod
    def target_of(entry: Path) -> str:
        return entry.name.removesuffix(Outbox.SUFFIX).rsplit("-", 1)[-1]

    def put(self, message: Mapping[str, Any], target_id: str, target_name: str, error: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        entry = self.folder / f"{time.time_ns():020d}-{message['id']}-{target_id}{self.SUFFIX}"
        record = {
            "message": dict(message),
            "target": target_id,
            "target_name": target_name,
            "queued_at": now_iso(),
            "attempts": 1,
            "last_error": error,
        }
        self._write(entry, record)
        return entry

    def claim(self, entry: Path) -> Path | None:
        """Take ``entry`` for this process; None if another took it first."""
        claimed = entry.with_name(f"{entry.name}{self.CLAIM}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(entry, claimed)
        except FileNotFoundError:
            return None
        with contextlib.suppress(OSError):
            os.utime(claimed)  # the claim's age counts from now
        return claimed

    def release(self, claimed: Path, entry: Path, record: dict[str, Any], error: str) -> None:
        """Put a claimed entry back after a failed attempt, its record updated."""
        record = {**record, "attempts": int(record.get("attempts", 1)) + 1, "last_error": error}
        self._write(claimed, record)
        os.rename(claimed, entry)

    def set_aside(self, claimed: Path, entry: Path) -> None:
        os.rename(claimed, entry.with_name(entry.name + ".unreadable"))

    def release_stale(self) -> None:
        """Give back the entries claimed by processes that died while sending them."""
        if not self.folder.is_dir():
            return
        deadline = time.time() - self.stale_after
        for path in self.folder.iterdir():
            if self.CLAIM not in path.name:
                continue
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < deadline:
                    os.rename(path, path.with_name(path.name.split(self.CLAIM)[0]))
                    log.info("released the stale claim %s", path.name)

    @staticmethod
    def _write(path: Path, record: Mapping[str, Any]) -> None:
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "w") as fh:
                fh.write(json.dumps(record, indent=1, sort_keys=True) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def pending(settings: Settings) -> list[dict[str, Any]]:
    """The messages waiting in the outbox of ``settings.home``."""
    return Outbox(outbox_dir(settings)).messages()


def deliver_all(alerts: Iterable[Alert], settings: Settings) -> list[Delivery]:
    return [deliver(alert, settings) for alert in alerts]
