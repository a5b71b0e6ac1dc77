"""``lerobot-assets demo``: the main job on the embedded default, with no network and no account.

Generates a small v3.0 sample dataset (several episodes, two AV1 cameras, several episodes per
file), ingests it through the Dagster instance of the home, tags a snapshot, and runs two example
queries on it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lerobot_assets.core.table.query import open_view, run_query
from lerobot_assets.runtime.commands import ingest, snapshot
from lerobot_assets.runtime.home import Home
from lerobot_assets.testing.synthetic import generate_dataset

log = logging.getLogger(__name__)

DEMO_NAME = "demo"
#: Example queries the demo runs; TQL has no COUNT, so rows per group are SHAPE(col)[0].
DEMO_QUERIES = {
    "frames_per_task": "SELECT task[0] AS task, SHAPE(episode_index)[0] AS frames GROUP BY task",
    "episode_1_first_half_second": 'SELECT episode_index, frame_index, "timestamp", "observation.state" '
    'WHERE episode_index == 1 AND "timestamp" < 0.5 ORDER BY frame_index',
}


def run_demo(home_dir: Path) -> dict[str, Any]:
    """Generate, ingest, snapshot and query the sample dataset; return a summary."""
    home = Home(home_dir)
    sample = home.root / "samples" / "demo_v30"
    if not (sample / "meta" / "info.json").is_file():
        log.info("generating the sample dataset in %s", sample)
        generate_dataset(
            sample,
            version="v3.0",
            episode_lengths=(45, 38, 52, 41, 36, 47),
            cameras=("cam_high", "cam_left_wrist"),
            codec="libsvtav1",
            episodes_per_file=2,
            files_per_chunk=2,
            robot_type="demo_arm",
        )
    ingested = ingest(str(sample), name=DEMO_NAME, home=home.root)
    tagged = snapshot(DEMO_NAME, home=home.root)
    view = open_view(ingested["table"], tagged["tag"])
    queries = {name: run_query(view, tql) for name, tql in DEMO_QUERIES.items()}
    for name, rows in queries.items():
        log.info("query %s: %d rows, first: %s", name, len(rows), rows[:1])
    return {
        "dataset": DEMO_NAME,
        "table": ingested["table"],
        "rows": ingested["rows"],
        "episodes": ingested["episodes"],
        "materialized": ingested["materialized"],
        "tag": tagged["tag"],
        "version": tagged["version"],
        "queries": {
            name: {"tql": DEMO_QUERIES[name], "rows": len(rows), "first_rows": rows[:3]} for name, rows in queries.items()
        },
    }
