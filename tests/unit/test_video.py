"""Frame conversion: the kept reformatter gives exactly PyAV's own RGB frames."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from lerobot_assets.core.media.video import rgb_converter
from lerobot_assets.testing.synthetic import generate_dataset


def _frames(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(container.streams.video[0]))


def test_rgb_converter_gives_pyavs_pixels_across_files_and_sizes(official_dataset: Path, tmp_path: Path) -> None:
    """One converter over an official AV1 file and generated H.264 and AV1 files of other sizes:
    every frame equals ``to_ndarray(format="rgb24")``, shape and pixels."""
    generated = [
        generate_dataset(tmp_path / codec, episode_lengths=[12], cameras=["cam"], height=h, width=w, codec=codec)
        for codec, h, w in (("libx264", 72, 96), ("libsvtav1", 64, 160))
    ]
    paths = [sorted(official_dataset.rglob("*.mp4"))[0]] + [sorted(root.rglob("*.mp4"))[0] for root in generated]
    to_rgb = rgb_converter()
    shapes = set()
    for path in paths:
        frames = _frames(path)
        assert frames, path
        for frame in frames:
            expected = frame.to_ndarray(format="rgb24")
            got = to_rgb(frame)
            assert got.dtype == np.uint8 and got.shape == expected.shape == (frame.height, frame.width, 3)
            assert np.array_equal(got, expected), (path, frame.pts)
        shapes.add(expected.shape)
    assert len(shapes) == 3
