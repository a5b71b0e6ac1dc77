"""Exceptions a user can act on.

Every error raised for bad input names where the problem is (dataset, episode, file) and what was
expected, so that a failed overnight backfill can be fixed from its message alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path


class LeRobotAssetsError(Exception):
    """Base class of the errors this package raises on purpose."""


class DatasetFormatError(LeRobotAssetsError):
    """The LeRobot dataset on disk does not match what its own metadata promises."""


class VideoDecodeError(LeRobotAssetsError):
    """A camera stream cannot be decoded, or its frames do not line up with the telemetry."""


class TableError(LeRobotAssetsError):
    """The Deeplake table is missing, or a request does not fit what it holds."""


def where(dataset: str | None = None, episode: int | None = None, file: str | Path | None = None) -> str:
    """Format the location part of an error message: ``dataset 'x', episode 3, file data/...``."""
    parts = []
    if dataset is not None:
        parts.append(f"dataset {dataset!r}")
    if episode is not None:
        parts.append(f"episode {episode}")
    if file is not None:
        parts.append(f"file {str(file)!r}")
    return ", ".join(parts)


#: How many problems an error line shows; the rest go to a details file.
SHOWN = 3


def bounded(head: str, problems: Mapping[int, str], details: Path | None, shown: int = SHOWN) -> str:
    """One error line of bounded size: ``head``, the first ``shown`` problems (by key) and how many more.

    When some are left out, every one of them is written to ``details`` (JSON: key -> message) and
    the line names that file.
    """
    items = [problems[key] for key in sorted(problems)]
    line = f"{head}: {'; '.join(items[:shown])}"
    if len(items) <= shown:
        return line
    line += f"; ... and {len(items) - shown} more"
    if details is not None:
        details.parent.mkdir(parents=True, exist_ok=True)
        details.write_text(json.dumps({str(key): problems[key] for key in sorted(problems)}, indent=1))
        line += f" (all {len(items)} in {str(details)!r})"
    return line
