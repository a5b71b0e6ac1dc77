"""Normalization statistics computed exactly as LeRobot computes them (``compute_stats.py``), without torch.

Policies trained with LeRobot normalize inputs with ``meta/stats.json``; reproducing its numbers
lets a table stand in for the original dataset. What LeRobot does, and so what this module does:

- Per episode, every numeric feature gets ``min``, ``max``, ``mean``, ``std``, ``count`` and the
  quantiles ``q01 q10 q50 q90 q99`` over the episode's frames. Quantiles are read off a
  5000-bin histogram spanning ``[min - 1e-10, max + 1e-10]``, interpolated within a bin, and
  the first bin's lower edge is returned when the target count falls inside the first
  occupied bin. Hence ``frame_index`` and ``timestamp`` have ``q01 = -1e-10``: 1% of an
  episode of fewer than 100 frames is less than its first frame.
- ``std`` is ``sqrt(max(0, mean(x**2) - mean(x)**2))`` computed in the input dtype. For camera
  frames that dtype is ``uint8``, where ``x**2`` wraps around modulo 256, so the variance is
  negative and every per-episode image ``std`` is 0.
- Camera statistics use about 100 frames of the episode (:func:`sample_indices`), thinned to
  about 150 px when their longest side is 300 px or more, in CHW uint8, and are divided by 255
  into ``(3, 1, 1)`` arrays.
- Episodes are aggregated with count-weighted means and the parallel variance formula, so the
  dataset image ``std`` is only the spread *between* episode means (0.004 to 0.04 in the official
  fixture, where the pixels' real spread is about 0.22): mean/std normalization of images with
  these stats would blow them up, which is why image features are usually normalized otherwise
  (or with ImageNet stats). Quantiles
  are aggregated as count-weighted means of the episodes' quantiles: a constant feature such as
  ``task_index`` ends up with every quantile equal to its mean (0.94 in the official fixture),
  not to a value it ever takes.

LeRobot takes image statistics from the frames before video encoding; ingest takes them from the
frames decoded from the videos, before they are JPEG-encoded for the table (the decoder hands
:func:`channel_counts` of the sampled frames over, so no frame is decoded twice). Camera
statistics therefore differ from LeRobot's by the video compression error, typically by less
than 0.01.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lerobot_assets.core.errors import DatasetFormatError

Stats = dict[str, dict[str, np.ndarray]]  # feature -> statistic -> value

#: LeRobot's DEFAULT_QUANTILES, by the key it stores them under.
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
_BINS = 5000


def estimate_num_samples(length: int, min_samples: int = 100, max_samples: int = 10_000, power: float = 0.75) -> int:
    """How many frames of an episode of ``length`` frames image statistics use (LeRobot's heuristic)."""
    if length < min_samples:
        min_samples = length
    return max(min_samples, min(int(length**power), max_samples))


def sample_indices(length: int) -> list[int]:
    """The frames of an episode that image statistics use, evenly spread over it."""
    return np.round(np.linspace(0, length - 1, estimate_num_samples(length))).astype(int).tolist()


def auto_downsample_height_width(
    image: np.ndarray, target_size: int = 150, max_size_threshold: int = 300
) -> np.ndarray:
    """Thin a CHW image with a longest side of ``max_size_threshold`` px or more to about ``target_size`` px."""
    _, height, width = image.shape
    if max(width, height) < max_size_threshold:
        return image
    factor = int(width / target_size) if width > height else int(height / target_size)
    return image[:, ::factor, ::factor]


def _quantile(cumsum: np.ndarray, edges: np.ndarray, target: float) -> Any:
    """The value below which ``target`` counts of the histogram whose cumulative sum is ``cumsum`` lie."""
    idx = np.searchsorted(cumsum, target)
    if idx == 0:
        return edges[0]
    if idx >= len(cumsum):
        return edges[-1]
    before = cumsum[idx - 1]
    in_bin = cumsum[idx] - before
    if in_bin == 0:
        return edges[idx]
    return edges[idx] + (target - before) / in_bin * (edges[idx + 1] - edges[idx])


def _quantiles(values: np.ndarray, low: Any, high: Any, total: int, weights: np.ndarray | None = None) -> dict[str, Any]:
    """The ``QUANTILES`` of one column from its ``_BINS``-bin histogram over ``[low - 1e-10, high + 1e-10]``.

    The edges are computed in the values' dtype, as LeRobot does. A near-constant float32 column
    (e.g. 152.50363..152.54759) has fewer float32 values in its range than bins, so those edges
    would not increase (numpy: "Too many bins for data range"): it is binned in float64 instead.
    """
    edges = np.linspace(low - 1e-10, high + 1e-10, _BINS + 1)
    if np.isfinite(edges[[0, -1]]).all() and not (np.diff(edges) > 0).all():
        values, low, high = values.astype(np.float64), np.float64(low), np.float64(high)
        edges = np.linspace(low - 1e-10, high + 1e-10, _BINS + 1)
    if np.isfinite(edges[[0, -1]]).all() and (edges[1:] > edges[:-1]).all():
        # equal-width bins: numpy's arithmetic path, same counts, 2-3x faster
        hist = np.histogram(values, bins=_BINS, range=(edges[0], edges[-1]), weights=weights)[0]
    else:
        # NaN telemetry (flagged by a check), or a constant column of values above ~256 (episode_index
        # from episode 256 on), whose +-1e-10 range is narrower than 5000 distinct float64 steps: the
        # arithmetic path refuses both, ``edges`` (non-decreasing) give LeRobot's result
        hist = np.histogram(values, bins=edges, weights=weights)[0]
    cumsum = np.cumsum(hist.astype(np.float64))  # once per column, not once per quantile
    return {name: _quantile(cumsum, edges, q * total) for name, q in QUANTILES.items()}


def _stats(
    low: np.ndarray, high: np.ndarray, mean: np.ndarray, variance: np.ndarray, count: int, per_column: list[dict[str, Any]]
) -> dict[str, np.ndarray]:
    """LeRobot's stats dict from the moments and each column's :func:`_quantiles`."""
    stats = {"min": low, "max": high, "mean": mean, "std": np.sqrt(np.maximum(0, variance)), "count": np.array([count])}
    return stats | {name: np.array([column[name] for column in per_column]) for name in QUANTILES}


def _columns_stats(columns: np.ndarray, count: int) -> dict[str, np.ndarray]:
    """Stats of each column of a 2-D array, as LeRobot's ``RunningQuantileStats`` after one update.

    The arithmetic keeps the input dtype on purpose (float32 means, wrapped uint8 squares),
    because LeRobot's numbers depend on it.
    """
    if len(columns) < 2:  # LeRobot's _compute_basic_stats: quantiles fall back to the mean
        mean = np.mean(columns, axis=0)
        basic = {"min": np.min(columns, axis=0), "max": np.max(columns, axis=0), "mean": mean,
                 "std": np.std(columns, axis=0), "count": np.array([count])}
        return basic | {name: mean.copy() for name in QUANTILES}
    mean = np.mean(columns, axis=0)
    variance = np.mean(columns**2, axis=0) - mean**2
    low, high = np.min(columns, axis=0), np.max(columns, axis=0)
    quantiles = [_quantiles(columns[:, j], low[j], high[j], len(columns)) for j in range(columns.shape[1])]
    return _stats(low, high, mean, variance, count, quantiles)


def _counts_stats(counts: np.ndarray, count: int) -> dict[str, np.ndarray]:
    """:func:`_columns_stats` of uint8 pixels given as per-channel value ``counts`` ``(channels, 256)``: the same numbers, far faster.

    Sums of integers are exact in float64 either way, and ``x**2`` wraps modulo 256 as uint8 does.
    """
    values = np.arange(256)
    total = int(counts[0].sum())
    mean = counts @ values / total
    variance = counts @ (values**2 % 256) / total - mean**2
    low = np.argmax(counts > 0, axis=1).astype(np.uint8)
    high = (255 - np.argmax(counts[:, ::-1] > 0, axis=1)).astype(np.uint8)
    present = [np.flatnonzero(c) for c in counts]
    quantiles = [_quantiles(v, low[j], high[j], total, counts[j, v].astype(np.float64)) for j, v in enumerate(present)]
    return _stats(low, high, mean, variance, count, quantiles)


def feature_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Stats of one numeric feature over an episode: ``values`` is ``(frames,)`` or ``(frames, dim)``."""
    values = np.asarray(values)
    stats = _columns_stats(values.reshape(len(values), -1), len(values))
    if values.ndim == 1:  # LeRobot keeps scalar features as shape (1,)
        return {name: value.reshape(1) for name, value in stats.items()}
    return stats


def channel_counts(rgb: np.ndarray) -> np.ndarray:
    """Per-channel value counts ``(3, 256)`` of one HWC uint8 frame, thinned as LeRobot thins frames for stats.

    Counts of sampled frames add up, so a decoder can take them from the frames it has in hand
    and keep no frame: see :func:`image_stats_from_counts`.
    """
    thinned = auto_downsample_height_width(rgb.transpose(2, 0, 1))
    return np.stack([np.bincount(channel.ravel(), minlength=256) for channel in thinned])


def image_stats_from_counts(counts: np.ndarray, frames: int) -> dict[str, np.ndarray]:
    """Per-channel stats in [0, 1], shaped ``(3, 1, 1)``, from the summed :func:`channel_counts` of ``frames`` sampled frames."""
    stats = _counts_stats(counts, frames)
    return {name: value if name == "count" else value.reshape(-1, 1, 1) / 255.0 for name, value in stats.items()}



def episode_stats(values: Mapping[str, Any], *, location: str = "") -> Stats:
    """Stats of one episode's numeric features: ``values`` maps features to per-frame arrays (camera
    stats come from the decoder: :func:`channel_counts`, :func:`image_stats_from_counts`).

    Non-numeric values (the ``task`` text) are skipped, as LeRobot skips string features. A
    failure raises :class:`DatasetFormatError` naming ``location`` (dataset, episode, file) and the column.
    """
    stats: Stats = {}
    for key, value in values.items():
        try:
            if (array := np.asarray(value)).dtype.kind in "iuf":
                stats[key] = feature_stats(array)
        except (ValueError, ArithmeticError) as exc:
            raise DatasetFormatError(f"{location}: statistics of column {key!r} cannot be computed ({exc})") from None
    return stats


def _aggregate_feature(per_episode: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    means = np.stack([s["mean"] for s in per_episode])
    variances = np.stack([s["std"] ** 2 for s in per_episode])
    counts = np.stack([s["count"] for s in per_episode])
    total = counts.sum(axis=0)
    while counts.ndim < means.ndim:
        counts = np.expand_dims(counts, axis=-1)
    mean = (means * counts).sum(axis=0) / total
    variance = ((variances + (means - mean) ** 2) * counts).sum(axis=0) / total
    aggregated = {
        "min": np.min(np.stack([s["min"] for s in per_episode]), axis=0),
        "max": np.max(np.stack([s["max"] for s in per_episode]), axis=0),
        "mean": mean,
        "std": np.sqrt(variance),
        "count": total,
    }
    for name in (k for k in per_episode[0] if k.startswith("q") and k[1:].isdigit()):
        if all(name in s for s in per_episode):
            aggregated[name] = (np.stack([s[name] for s in per_episode]) * counts).sum(axis=0) / total
    return aggregated


def aggregate_stats(per_episode: Sequence[Stats]) -> Stats:
    """Dataset stats from episode stats, as LeRobot's ``aggregate_stats`` (every feature any episode has)."""
    keys = dict.fromkeys(key for stats in per_episode for key in stats)
    return {key: _aggregate_feature([stats[key] for stats in per_episode if key in stats]) for key in keys}


def stats_to_json(stats: Stats) -> dict[str, dict[str, Any]]:
    """Nested lists, as in LeRobot's ``meta/stats.json``."""
    return {key: {name: np.asarray(v).tolist() for name, v in feature.items()} for key, feature in stats.items()}


def stats_from_json(data: Mapping[str, Mapping[str, Any]]) -> Stats:
    """The inverse of :func:`stats_to_json` (LeRobot's ``cast_stats_to_numpy``)."""
    return {key: {name: np.array(value) for name, value in feature.items()} for key, feature in data.items()}
