"""Files written whole or not at all, and work read ahead in a thread.

:func:`replacing` is the one way closedloop publishes a file: the content goes to a
temporary file beside the target, which then replaces it with ``os.replace`` (atomic on
one file system), so a reader sees the old file or the new one, never half of one, and a
failed write leaves nothing behind. :func:`prefetched` runs an iterator one or two items
ahead in a thread (for readers that release the GIL, such as Arrow's).
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

#: permissions of a published file: mkstemp's temporaries are private to their owner
PUBLISHED = 0o644


@contextmanager
def replacing(
    path: Path, *, prefix: str | None = None, mode: int | None = PUBLISHED
) -> Iterator[Path]:
    """A temporary path beside ``path`` (named ``<prefix>…tmp``, ``.<name>.`` by default)
    to write to; on a clean exit it replaces ``path``, with permissions ``mode`` (None:
    as written), on an exception it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        dir=path.parent, prefix=prefix if prefix is not None else f".{path.name}.", suffix=".tmp"
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step."""
    with replacing(path) as tmp:
        tmp.write_text(text)


def move(source: Path, target: Path) -> None:
    """Move ``source`` to ``target`` in one step; across file systems, through a copy
    beside the target."""
    try:
        os.replace(source, target)
    except OSError:
        with replacing(target, mode=None) as tmp:
            shutil.copy2(source, tmp)
        source.unlink()


def prefetched(items: Iterator[Any], depth: int = 2, name: str = "prefetch") -> Iterator[Any]:
    """``items``, produced by a thread of their own up to ``depth`` ahead. An error is
    raised in the consumer; a consumer that stops early stops the producer."""
    done = object()
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((done, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            slots.put((done, exc))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                thread.join(0.05)
