"""Files replaced in one step: a reader sees the old content or the new, never a half-written file."""

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; it replaces ``path`` (one rename) when the block succeeds.

    The temporary name is per process and thread, so concurrent writers (two ingests registering a
    dataset, threads recording a pin) never write into each other's file; the last rename wins.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Replace ``path``'s content with ``text`` in one step (see :func:`replacing`)."""
    with replacing(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path``'s content with ``data`` in one step (see :func:`replacing`)."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)
