"""Generated datasets of every supported shape, ingested end to end and checked value by value."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lerobot_assets.core.table.access import open_read_only
from lerobot_assets.runtime.commands import ingest
from lerobot_assets.testing.synthetic import block_x, generate_dataset, render_frame

from tests.conftest import white_block_x

VARIANTS = {
    # v3.0: 5 episodes, 2 per file, 2 files per chunk -> data and videos over 3 files in 2 chunks.
    "v30-multifile-4cams-av1": dict(
        version="v3.0", episode_lengths=(12, 9, 14, 8, 11), cameras=("a", "b", "c", "d"), codec="libsvtav1"
    ),
    "v30-multichunk-1cam-h264-noeffort": dict(
        version="v3.0", episode_lengths=(10, 13, 9, 12, 7), cameras=("front",), codec="libx264", effort=False,
        episodes_per_file=1, files_per_chunk=2,
    ),
    "v21-2cams-av1": dict(version="v2.1", episode_lengths=(11, 15, 9), cameras=("high", "wrist"), codec="libsvtav1"),
    "v21-1cam-h264-noeffort": dict(
        version="v2.1", episode_lengths=(10, 8, 12), cameras=("front",), codec="libx264", effort=False
    ),
}


def _source_rows(root: Path) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in sorted((root / "data").rglob("*.parquet"))]
    return pd.concat(frames).sort_values("index").reset_index(drop=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_generated_dataset_ingests_exactly(variant: str, tmp_path: Path) -> None:
    options = VARIANTS[variant]
    root = generate_dataset(tmp_path / "src", **options)
    result = ingest(str(root), name="gen", home=tmp_path / "home", workers=1)
    lengths = options["episode_lengths"]
    assert result["rows"] == sum(lengths)
    assert result["episodes"] == list(range(len(lengths)))

    ds = open_read_only(result["table"])
    columns = {c.name for c in ds.schema.columns}
    cameras = [f"observation.images.{c}" for c in options["cameras"]]
    assert set(cameras) <= columns
    assert ("observation.effort" in columns) == options.get("effort", True)

    order = np.argsort(np.asarray(ds["index"][:]))
    source = _source_rows(root)
    assert np.asarray(ds["index"][:])[order].tolist() == source["index"].tolist()
    assert np.asarray(ds["episode_index"][:])[order].tolist() == source["episode_index"].tolist()
    for key in ("observation.state", "action") + (("observation.effort",) if options.get("effort", True) else ()):
        stored = np.asarray(ds[key][:])[order]
        assert stored.dtype == np.float32 and stored.shape == (len(source), 6)
        assert np.array_equal(stored, np.stack(source[key].to_numpy()).astype(np.float32)), key

    frame_index = np.asarray(ds["frame_index"][:])
    for camera_number, camera in enumerate(cameras):
        column = ds[camera]
        for offset in range(len(ds)):
            image = np.asarray(Image.open(io.BytesIO(column.get_bytes(offset))).convert("RGB"))
            expected_x = block_x(int(frame_index[offset]), 128)
            assert abs(white_block_x(image) - expected_x) <= 1, (camera, offset)
            # Lossy codecs blur colours, so the frame must be nearer its own rendering than its neighbours'.
            errors = [
                np.abs(image.astype(int) - render_frame(int(frame_index[offset]) + d, camera_number, 96, 128)).mean()
                for d in (-1, 0, 1)
            ]
            assert errors[1] < 12.0 and errors[1] < min(errors[0], errors[2]), (camera, offset, errors)
