"""Decoding one episode's segment of a camera's MP4 file and matching frames to telemetry rows.

LeRobot v3.0 concatenates many episodes into one MP4 per camera, so decoding from the start of the
file for every episode costs O(episodes²). Here each episode seeks to the keyframe before its
``from_timestamp`` and decodes forward only until its last frame. A telemetry row at ``timestamp``
takes the frame whose presentation time is ``from_timestamp + timestamp`` within ``tolerance_s``
(LeRobot's rule, 1e-4 s by default, never more than one frame period).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from lerobot_assets.core.errors import VideoDecodeError, where
from lerobot_assets.core.lerobot.meta import DatasetMeta, lfs_pointer_error
from lerobot_assets.core.lerobot.stats import channel_counts, image_stats_from_counts, sample_indices
from lerobot_assets.core.media.codec import encode_image

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE_S = 1e-4
T = TypeVar("T")


@dataclass(frozen=True)
class DecodedCamera:
    """One camera's encoded frames for an episode, how well they line up with the rows, and their stats."""

    frames: list[bytes]
    max_offset_s: float  # largest |frame presentation time - wanted time|
    stats: dict[str, np.ndarray] | None  # LeRobot's image statistics of the frames before encoding (None: no frames)


def rgb_converter() -> Callable[[av.VideoFrame], np.ndarray]:
    """A converter of decoded frames to HWC uint8 RGB, for one thread's frames (it is not thread-safe).

    ``VideoFrame.to_ndarray(format="rgb24")`` sets up a new swscale context, with its own slice
    threads, for every frame: 1-1.8 ms per 480x640 frame on 2 cores, most of it starting threads.
    One reformatter kept across frames, converting on the calling thread (parallelism comes from
    cameras and episodes), gives the same pixels in ~0.23 ms.
    """
    reformatter = VideoReformatter()

    def to_rgb(frame: av.VideoFrame) -> np.ndarray:
        return reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()

    return to_rgb


def decode_segment(
    path: Path,
    from_timestamp: float,
    timestamps: Sequence[float],
    convert: Callable[[av.VideoFrame, int], T],
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    location: str = "",
) -> tuple[list[T], float]:
    """``convert(frame, k)`` of the frame at ``from_timestamp + timestamps[k]`` in ``path``, for every ``k``.

    Returns the converted frames and the largest |presentation time - wanted time| among them.

    Seeks to the keyframe before the first wanted frame and stops after the last one. Raises
    :class:`VideoDecodeError` naming ``location``, the file and the time when a frame is missing or
    the file cannot be decoded.
    """
    targets = from_timestamp + np.asarray(timestamps, dtype=np.float64)
    at = f"{location}, file {str(path)!r}" if location else f"file {str(path)!r}"
    if not path.is_file():
        raise VideoDecodeError(f"{at}: video file is missing")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{at}: the file has no video stream")
            found, errors = _match_frames(container, targets, convert, tolerance_s)
    except av.FFmpegError as exc:
        raise VideoDecodeError(
            lfs_pointer_error(path, at) or f"{at}: cannot decode the video, it may be corrupt or truncated ({exc})"
        ) from None
    missing = [i for i, f in enumerate(found) if f is None]
    if missing:
        i = missing[0]
        raise VideoDecodeError(
            f"{at}: no frame at {targets[i]:.6f} s (from_timestamp {from_timestamp:.6f} + timestamp "
            f"{targets[i] - from_timestamp:.6f}) within {tolerance_s:g} s; {len(missing)} of {len(targets)} "
            "frames are missing (is the video shorter than the episode, or encoded at another frame rate?)"
        )
    return found, float(errors.max()) if len(errors) else 0.0


def _match_frames(
    container: Any, targets: np.ndarray, convert: Callable[[av.VideoFrame, int], T], tolerance_s: float
) -> tuple[list[Any], np.ndarray]:
    """Decode from the keyframe before ``targets[0]`` until past the last target; for each target,
    ``convert`` the frame nearest to it within ``tolerance_s`` (None if none) and give that distance."""
    found: list[Any] = [None] * len(targets)
    errors = np.full(len(targets), np.inf)
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1  # parallel across cameras and episodes instead: codec threads cost ~40% more CPU per frame
    time_base = float(stream.time_base)
    container.seek(max(0, int(targets[0] / time_base)), stream=stream, backward=True)
    first = 0  # targets before this index can no longer be matched by later frames
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        t = frame.pts * time_base
        while first < len(targets) and targets[first] + tolerance_s < t and found[first] is not None:
            first += 1
        if first == len(targets) or targets[first] + tolerance_s < t:
            break  # all found, or targets[first] was skipped over: reported by the caller
        k = first
        while k < len(targets) and targets[k] - tolerance_s <= t:
            error = abs(t - targets[k])
            if error <= tolerance_s and error < errors[k]:
                found[k], errors[k] = convert(frame, k), error
            k += 1
    return found, errors


def decode_episode(
    meta: DatasetMeta,
    index: int,
    timestamps: Sequence[float],
    *,
    image_format: str = "jpeg",
    quality: int = 95,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> dict[str, DecodedCamera]:
    """Encoded images of every camera of episode ``index``, one per telemetry timestamp, with their stats.

    Cameras are decoded in parallel threads (PyAV and libjpeg-turbo release the GIL while they
    work). The image statistics come from the decoded frames in hand, before JPEG encoding.
    """
    episode = meta.episode(index)
    tolerance_s = min(tolerance_s, 1.0 / meta.fps)
    sampled = set(sample_indices(len(timestamps)))

    def one(camera: str) -> DecodedCamera:
        if camera not in episode.videos:
            raise VideoDecodeError(
                f"{where(meta.name, index)}: camera {camera!r} has no video segment in meta/episodes"
            )
        segment = episode.videos[camera]
        to_rgb = rgb_converter()

        def convert(frame: av.VideoFrame, k: int) -> tuple[bytes, np.ndarray | None]:
            rgb = to_rgb(frame)
            return encode_image(rgb, image_format, quality), channel_counts(rgb) if k in sampled else None

        converted, max_offset_s = decode_segment(
            meta.root / segment.path,
            segment.from_timestamp,
            timestamps,
            convert,
            tolerance_s=tolerance_s,
            location=f"{where(meta.name, index)}, camera {camera!r}",
        )
        counts = [c for _, c in converted if c is not None]
        stats = image_stats_from_counts(sum(counts), len(counts)) if counts else None
        return DecodedCamera([frame for frame, _ in converted], max_offset_s, stats)

    cameras = meta.cameras
    if not cameras:
        return {}
    with ThreadPoolExecutor(max_workers=len(cameras)) as pool:
        return dict(zip(cameras, pool.map(one, cameras)))
