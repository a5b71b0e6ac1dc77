"""`lerobot-assets demo`: the main job on the embedded default, end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lerobot_assets.cli import main as cli_main
from lerobot_assets.runtime.commands import open_snapshot


def test_demo_generates_ingests_snapshots_and_queries(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["demo", "--home", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    lengths = (45, 38, 52, 41, 36, 47)  # the sample's episodes (lerobot_assets.cli.demo)
    assert result["rows"] == sum(lengths) and result["episodes"] == list(range(6))
    pinned = open_snapshot("demo", result["tag"], home=tmp_path)
    assert len(pinned) == sum(lengths) and pinned.version == result["version"]
    counts = result["queries"]["frames_per_task"]
    assert sum(row["frames"] for row in counts["first_rows"]) == sum(lengths) and counts["rows"] == len(counts["first_rows"])
    window = result["queries"]["episode_1_first_half_second"]
    assert window["rows"] == 15  # 30 fps: frames 0..14 are before 0.5 s
    assert [row["frame_index"] for row in window["first_rows"]] == [0, 1, 2]
    # A second demo run finds nothing to do and tags again.
    assert cli_main(["demo", "--home", str(tmp_path)]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["materialized"] == [] and again["rows"] == result["rows"] and again["tag"] != result["tag"]
