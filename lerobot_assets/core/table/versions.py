"""What the table holds already, and what a new revision changes.

Each episode's data version is its input fingerprint plus the stages' code version. The table
records the data version each episode's rows were written with (:func:`~lerobot_assets.core.table.metadata.episode_versions`),
so the episode asset itself, the CLI and the sensor all compare the fingerprints of a revision with
the table, whichever machine or Dagster instance wrote it, and redo exactly the episodes that changed.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

from lerobot_assets.core.errors import TableError
from lerobot_assets.core.table.access import open_read_only
from lerobot_assets.core.table.metadata import episode_versions

#: Bump when a stage's output changes for the same input, or the fingerprint's format changes (3:
#: fingerprints of values, not of their parquet encoding); part of each episode's data version, so
#: a bump makes the next ingest rewrite every episode rather than keep rows judged by another rule.
CODE_VERSION = "3"


def episode_data_version(fingerprint: str) -> str:
    """The data version an episode partition gets for inputs with ``fingerprint``."""
    return f"{fingerprint}-{CODE_VERSION}"


@dataclass
class ChangePlan:
    """Episodes of one dataset sorted by what a new revision means for them."""

    added: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)

    @property
    def todo(self) -> list[int]:
        return sorted(self.added + self.changed)


def recorded_versions(url: str) -> dict[int, str]:
    """The data version of every episode the table at ``url`` holds (none when there is no table yet)."""
    try:
        return episode_versions(open_read_only(url))
    except TableError:
        return {}


def plan_changes(recorded: Mapping[int, str], fingerprints: Mapping[int, str]) -> ChangePlan:
    """Compare ``fingerprints`` (episode -> fingerprint at the new revision) with the table's ``recorded`` data versions."""
    plan = ChangePlan()
    for index, fingerprint in sorted(fingerprints.items()):
        version = recorded.get(index)
        if version is None:
            plan.added.append(index)
        elif version != episode_data_version(fingerprint):
            plan.changed.append(index)
        else:
            plan.unchanged.append(index)
    return plan
