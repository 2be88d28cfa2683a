"""Quarantine: a batch that failed validation leaves the landing folder, with its report.

``quarantine_dir/<key>/`` holds the landed file (moved, not copied, so it is not picked up
again), ``report.json`` (the :class:`ValidationResult`, where the file came from, and the
Data Docs page of the validation) and, when there is one, a copy of that page
(``data_docs.html``; it keeps its content if the GX folder is cleaned, though not its
stylesheet).

Everything is idempotent, so an Airflow retry is harmless: once the file has been moved a
second call only rewrites the same report; a *newer* file landed at the same path since
replaces the quarantined copy. Files are replaced with ``os.replace`` (atomic on one file
system) and the report is written to a temporary file first.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from closedloop.core.files import move, replacing, write_text
from closedloop.core.validation_result import ValidationResult

REPORT = "report.json"
DOCS_COPY = "data_docs.html"


def quarantine_batch(
    batch_path: Path, result: ValidationResult, quarantine_dir: Path, key: str
) -> Path:
    """Move ``batch_path`` to ``quarantine_dir/<key>/`` and write its report; return the folder.

    Raises ``FileNotFoundError`` only if the file is neither at ``batch_path`` nor already
    in quarantine.
    """
    batch_path = Path(batch_path)
    folder = Path(quarantine_dir) / key
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / batch_path.name
    previous = _read_json(folder / REPORT)

    if batch_path.exists():  # first call, or a newer file has landed since
        move(batch_path, target)
        quarantined_at = datetime.now(UTC).isoformat()
    elif target.exists():  # a retry after the move
        quarantined_at = (previous or {}).get("quarantined_at") or datetime.now(UTC).isoformat()
    else:
        raise FileNotFoundError(f"{batch_path} is neither landed nor quarantined in {folder}")

    docs_copy = _copy_docs(result.data_docs, folder)
    report: dict[str, Any] = result.to_dict()
    report.update(
        {
            "key": key,
            "original_path": str(batch_path),
            "file_name": batch_path.name,
            "quarantined_path": str(target),
            "quarantined_at": quarantined_at,
            "data_docs_copy": str(docs_copy) if docs_copy else None,
            "summary": result.summary(),
        }
    )
    write_text(folder / REPORT, json.dumps(report, indent=2, sort_keys=True) + "\n")
    return folder


def load_quarantine_report(quarantine_dir: Path, key: str) -> ValidationResult | None:
    """The result a batch was quarantined with, or None if nothing is quarantined for key."""
    data = _read_json(Path(quarantine_dir) / key / REPORT)
    return ValidationResult.from_dict(data) if data is not None else None


def _copy_docs(page: str | None, folder: Path) -> Path | None:
    if not page or not Path(page).is_file():
        return None
    target = folder / DOCS_COPY
    if Path(page).resolve() == target.resolve():
        return target
    with replacing(target) as tmp:
        shutil.copyfile(page, tmp)
    return target


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
