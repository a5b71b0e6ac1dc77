"""A backfill launched the way the UI launches one (GraphQL on a real webserver, run by a real
``dagster-daemon``) skips unchanged episodes inside the asset: it never rewrites an unchanged table,
and after an upstream edit it rewrites exactly the edited episode."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lerobot_assets.core.table.access import open_read_only
from lerobot_assets.runtime.commands import ingest
from tests.support.dagster_server import dagster_dev, graphql, tail
from tests.defs.test_incremental import LENGTHS, _edit_actions, _make_repo

pytestmark = pytest.mark.timeout(600)
BACKFILL_TIMEOUT_S = 300
#: "Materialize all" on the ingest group: every asset, every partition.
INGEST_ASSETS = ("hf_snapshot", "episode_metadata", "telemetry_frame", "decoded_camera_frames", "deeplake_table")

_LAUNCH = """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } ... on InvalidSubsetError { message } } }"""
_STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PartitionBackfill { status } ... on PythonError { message } } }"""
_STALE = """query($key: AssetKeyInput!, $partitions: [String!]!) { assetNodeOrError(assetKey: $key) {
  ... on AssetNode { staleStatusByPartition(partitions: $partitions) } } }"""


def _stale_status(base: str, asset: str) -> list[str]:
    """The UI's in/out-of-sync status of each of the dataset's episode partitions of ``asset``."""
    keys = [f"{i:06d}" for i in range(len(LENGTHS))]
    node = graphql(base, _STALE, {"key": {"path": ["gen", asset]}, "partitions": keys})["assetNodeOrError"]
    return node["staleStatusByPartition"]


def _backfill_all(base: str, log: Path) -> str:
    """Launch a backfill of every ingest asset over all its partitions and wait until the daemon finished it."""
    params = {"partitionsByAssets": [{"assetKey": {"path": ["gen", key]}} for key in INGEST_ASSETS], "title": "materialize all"}
    launched = graphql(base, _LAUNCH, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    deadline = time.monotonic() + BACKFILL_TIMEOUT_S
    status = "REQUESTED"
    while time.monotonic() < deadline:
        status = graphql(base, _STATUS, {"id": launched["backfillId"]})["partitionBackfillOrError"]["status"]
        if status not in ("REQUESTED", "CANCELING", "FAILING"):
            return status
        time.sleep(2)
    pytest.fail(f"backfill still {status} after {BACKFILL_TIMEOUT_S} s; dagster dev log:\n{tail(log, 80)}")


def test_ui_backfill_rewrites_only_changed_episodes(tmp_path: Path) -> None:
    repo = _make_repo(tmp_path / "repo")
    home = tmp_path / "home"
    first = ingest(str(repo), name="gen", home=home, workers=1)
    commits = len([c.message for c in open_read_only(first["table"]).history])
    log = tmp_path / "dagster-dev.log"
    with dagster_dev(home, log) as base:
        assert _backfill_all(base, log) in ("COMPLETED", "COMPLETED_SUCCESS")
        ds = open_read_only(first["table"])
        assert ds.version == first["version"]  # unchanged dataset: the table is not rewritten

        _edit_actions(repo, [2])
        assert _backfill_all(base, log) in ("COMPLETED", "COMPLETED_SUCCESS")
        # every episode was compared with the new revision, the 4 unchanged ones included: none shows "Unsynced"
        assert _stale_status(base, "deeplake_table") == ["FRESH"] * len(LENGTHS)
        # the same after an ingest from the command line at another new revision, which rewrites episode 3 only
        _edit_actions(repo, [3])
        again = ingest(str(repo), name="gen", home=home, workers=1)
        assert (again["changed"], again["unchanged"]) == ([3], [0, 1, 2, 4])
        assert _stale_status(base, "deeplake_table") == ["FRESH"] * len(LENGTHS)
        assert _stale_status(base, "telemetry_frame") == ["FRESH"] * len(LENGTHS)
    ds = open_read_only(first["table"])
    messages = [c.message for c in ds.history]
    # one commit per run that wrote rows: the backfill's (episode 2, indexes recreated in the same commit, so
    # queries stay exact), then the command line's (episode 3)
    assert len(messages) == commits + 2, messages[commits:]
    assert messages[-1].startswith("ingest gen episodes [3] at revision"), messages[-1]
    assert len(ds) == sum(LENGTHS)
