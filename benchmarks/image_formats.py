"""Stored-frame formats compared: JPEG at several qualities and PNG, on frames decoded from real videos.

    .venv/bin/python benchmarks/image_formats.py [VIDEO ...] [--frames 60]

For each video (default: the cameras of the shared official fixture, and a generated 480x640
AV1 camera), ``--frames`` frames spread over it are decoded as ingest decodes them and encoded
with :func:`lerobot_assets.core.media.codec.encode_image`. Reported per format: bytes per frame, its ratio
to the source video's bytes per frame, encode time per frame, and the error of the stored frame
decoded again against the decoded source frame (mean absolute error in levels, PSNR in dB, and
the share of pixel values off by more than 8 levels). The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from lerobot_assets.core.media.codec import decode_rgb, encode_image
from lerobot_assets.core.media.video import rgb_converter
from lerobot_assets.testing.synthetic import generate_dataset

FORMATS = [("jpeg", 75), ("jpeg", 85), ("jpeg", 90), ("jpeg", 95), ("jpeg", 100), ("png", 0)]
FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "lerobot_v30_small"


def frames_of(video: Path, count: int) -> tuple[list[np.ndarray], float]:
    """``count`` frames spread over ``video`` as RGB arrays, and the video's bytes per frame."""
    to_rgb = rgb_converter()
    with av.open(str(video)) as container:
        decoded = [to_rgb(frame) for frame in container.decode(container.streams.video[0])]
    picked = np.linspace(0, len(decoded) - 1, min(count, len(decoded))).round().astype(int)
    return [decoded[i] for i in picked], video.stat().st_size / len(decoded)


def measure(frames: list[np.ndarray], image_format: str, quality: int) -> dict[str, float]:
    started = time.perf_counter()
    encoded = [encode_image(frame, image_format, quality) for frame in frames]
    seconds = (time.perf_counter() - started) / len(frames)
    errors = np.concatenate([np.abs(decode_rgb(blob).astype(np.int16) - frame).ravel() for blob, frame in zip(encoded, frames)])
    mse = float(np.mean(errors.astype(np.float64) ** 2))
    return {
        "bytes": float(np.mean([len(blob) for blob in encoded])),
        "encode_ms": seconds * 1e3,
        "mean_abs_error": float(errors.mean()),
        "psnr_db": float("inf") if mse == 0 else 10 * np.log10(255**2 / mse),
        "share_off_by_over_8": float(np.mean(errors > 8)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="*", type=Path)
    parser.add_argument("--frames", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        videos = args.videos or [
            *sorted(FIXTURE.glob("videos/*/chunk-000/file-000.mp4")),
            *generate_dataset(Path(tmp) / "gen", episode_lengths=(90,), cameras=("cam",), height=480, width=640,
                              episodes_per_file=1).glob("videos/*/chunk-000/file-000.mp4"),
        ]
        results = {}
        for video in videos:
            frames, source_bytes = frames_of(video, args.frames)
            name = f"{video.parts[-3]} ({frames[0].shape[1]}x{frames[0].shape[0]}, {video.parts[-5] if 'gen' in video.parts else 'fixture'})"
            print(f"\n{name}: source {source_bytes:.0f} B/frame")
            print(f"{'format':<10}{'B/frame':>9}{'x source':>10}{'encode ms':>11}{'MAE':>7}{'PSNR dB':>9}{'>8 lv':>8}")
            results[name] = {}
            for image_format, quality in FORMATS:
                m = measure(frames, image_format, quality)
                label = f"{image_format} {quality}" if image_format == "jpeg" else image_format
                m["x_source"] = m["bytes"] / source_bytes
                results[name][label] = {k: round(v, 4) for k, v in m.items()}
                print(f"{label:<10}{m['bytes']:>9.0f}{m['x_source']:>10.1f}{m['encode_ms']:>11.2f}{m['mean_abs_error']:>7.2f}"
                      f"{m['psnr_db']:>9.1f}{m['share_off_by_over_8']:>8.3f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
