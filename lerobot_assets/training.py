"""PyTorch access to a snapshot: LeRobotDataset-style items read from a tagged Deeplake table.

torch is an optional dependency of the package, so only this module imports it.

Why it is fast: the small numeric columns of the snapshot are read once, column by column, into
numpy at construction, so building an item's telemetry, windows and padding masks is array
indexing. Only camera frames are read per batch: their encoded JPEG bytes, fetched in one
Deeplake call per camera for the whole batch (``__getitems__``, which the DataLoader uses), then
decoded in the worker. The Deeplake dataset is opened lazily in each process, so the object
pickles cheaply for ``spawn`` workers and is never shared across a ``fork``.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lerobot_assets.home import Home, default_home
from lerobot_assets.stats import Stats, dataset_stats
from lerobot_assets.table import METADATA_KEY, INDEX_DTYPES, TableError, open_tag

try:  # libjpeg-turbo without Pillow's per-image overhead: ~3x faster decoding, same pixels
    import simplejpeg
except ImportError:  # pragma: no cover - optional speed-up
    simplejpeg = None

#: LeRobot's default tolerance for delta_timestamps that are not multiples of 1/fps.
TOLERANCE_S = 1e-4
_JPEG_MAGIC = b"\xff\xd8"


@dataclass(frozen=True)
class SnapshotInfo:
    """Which data a run trained on: log these to reload exactly the same rows."""

    dataset: str
    tag: str
    version: str
    table: str


def decode_image(encoded: bytes) -> torch.Tensor:
    """An encoded frame as a float32 CHW tensor in [0, 1], like LeRobot's decoded video frames."""
    if simplejpeg is not None and encoded[:2] == _JPEG_MAGIC:
        rgb = simplejpeg.decode_jpeg(encoded, colorspace="RGB")
    else:
        with Image.open(io.BytesIO(encoded)) as image:
            rgb = np.array(image.convert("RGB"))
    # A channels-last view: the DataLoader's collate writes it into a contiguous batch in one copy.
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255)


def delta_indices(delta_timestamps: dict[str, list[float]], fps: float) -> dict[str, np.ndarray]:
    """Frame offsets of ``delta_timestamps``, which must be multiples of 1/fps (LeRobot's check and rounding)."""
    out = {}
    for key, deltas in delta_timestamps.items():
        bad = [d for d in deltas if abs(d * fps - round(d * fps)) / fps > TOLERANCE_S]
        if bad or not deltas:
            raise ValueError(f"delta_timestamps[{key!r}] must be a non-empty list of multiples of 1/{fps:g} s; got {bad}")
        out[key] = np.array([round(d * fps) for d in deltas], dtype=np.int64)
    return out


class SnapshotDataset(torch.utils.data.Dataset):
    """The frames of ``dataset`` at snapshot ``tag`` as LeRobotDataset items.

    Each item has every camera as a float32 CHW tensor in [0, 1], the numeric features as
    tensors, ``timestamp``/``frame_index``/``episode_index``/``index``/``task_index`` as 0-d
    tensors and ``task`` as text. ``columns`` limits the cameras and features returned (index
    columns and ``task`` always are). ``delta_timestamps`` maps a key to offsets in seconds: the
    item then holds the values at those times stacked on a new first axis, clamped to the
    episode, and ``<key>_is_pad`` marks the clamped ones. ``episodes`` and ``query`` (TQL whose
    result includes the ``index`` column, e.g. ``SELECT * WHERE ...``) restrict which frames are
    samples; windows still read their neighbours in the same episode.
    """

    def __init__(
        self,
        dataset: str,
        tag: str,
        home: str | Path | None = None,
        columns: list[str] | None = None,
        delta_timestamps: dict[str, list[float]] | None = None,
        image_transforms: Callable[[torch.Tensor], torch.Tensor] | None = None,
        episodes: list[int] | None = None,
        query: str | None = None,
    ) -> None:
        url = Home(Path(home) if home else default_home()).dataset_source(dataset).table
        ds = open_tag(url, tag)
        self.snapshot = SnapshotInfo(dataset, tag, ds.version, url)
        metadata = json.loads(ds.metadata[METADATA_KEY]) if METADATA_KEY in ds.metadata.keys() else {}
        schema = {column.name: str(column.dtype) for column in ds.schema.columns}
        cameras = [name for name, dtype in schema.items() if dtype.startswith("kind=image")]
        features = [name for name in schema if name not in cameras and name not in INDEX_DTYPES and name != "task"]
        if columns is not None:
            unknown = sorted(set(columns) - set(cameras) - set(features))
            if unknown:
                raise ValueError(f"columns {unknown} are not in {url}; it has {sorted(cameras + features)}")
            cameras = [c for c in cameras if c in columns]
            features = [f for f in features if f in columns]
        self.camera_keys: list[str] = cameras
        if not metadata.get("fps"):
            raise TableError(f"{url} at tag {tag!r} has no fps in its metadata; re-ingest it")
        self.fps = float(metadata["fps"])
        self.image_transforms = image_transforms

        # Rows sorted by (episode, index): episode e occupies positions [start, end) of that order.
        index = np.asarray(ds["index"][:], dtype=np.int64)
        episode = np.asarray(ds["episode_index"][:], dtype=np.int64)
        self._order = np.lexsort((index, episode))
        sorted_episode, sorted_index = episode[self._order], index[self._order]
        firsts = np.flatnonzero(np.r_[True, sorted_episode[1:] != sorted_episode[:-1]])
        lengths = np.diff(np.r_[firsts, len(sorted_episode)])
        self._start = np.repeat(firsts, lengths)
        self._end = self._start + np.repeat(lengths, lengths)
        if np.any(sorted_index - sorted_index[self._start] != np.arange(len(index)) - self._start):
            raise TableError(f"{url} at tag {tag!r}: an episode's index values are not consecutive")

        self._values = {name: np.asarray(ds[name][:]) for name in [*features, *INDEX_DTYPES]}
        self._task_names, self._task_codes = np.unique(np.asarray(ds["task"][:], dtype=object), return_inverse=True)
        self._delta = delta_indices(delta_timestamps, self.fps) if delta_timestamps else {}
        unknown = sorted(set(self._delta) - set(cameras) - set(self._values))
        if unknown:
            raise ValueError(f"delta_timestamps keys {unknown} are not returned columns")

        selected = np.ones(len(index), dtype=bool)
        if episodes is not None:
            missing = sorted(set(episodes) - set(sorted_episode[firsts].tolist()))
            if missing:
                raise ValueError(f"episodes {missing} are not in {url} at tag {tag!r}")
            selected &= np.isin(sorted_episode, episodes)
        if query is not None:
            view = ds.query(query)
            if "index" not in {column.name for column in view.schema.columns}:
                raise ValueError("query must return the 'index' column, e.g. SELECT * WHERE ...")
            selected &= np.isin(sorted_index, np.asarray(view["index"][:], dtype=np.int64))
        self._samples = np.flatnonzero(selected)
        self.episodes: list[int] = np.unique(sorted_episode[self._samples]).tolist()
        self.stats: Stats | None = dataset_stats(metadata, sorted_episode[firsts].tolist())
        self._ds: Any = None
        self._ds_pid = -1

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def num_frames(self) -> int:
        return len(self._samples)

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ds": None, "_ds_pid": -1}

    def _table(self) -> Any:
        """The Deeplake dataset, opened once per process (a handle must not cross a fork)."""
        if self._ds is None or self._ds_pid != os.getpid():
            ds = open_tag(self.snapshot.table, self.snapshot.tag)
            if ds.version != self.snapshot.version:
                raise TableError(
                    f"tag {self.snapshot.tag!r} of {self.snapshot.table} now points at version {ds.version}, "
                    f"not {self.snapshot.version}"
                )
            self._ds, self._ds_pid = ds, os.getpid()
        return self._ds

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Items of a whole batch, reading each camera's frames for all of them in one call."""
        positions = self._samples[np.asarray(indices, dtype=np.int64)]
        windows, pads = {}, {}
        for key, offsets in self._delta.items():
            wanted = positions[:, None] + offsets[None, :]
            start, end = self._start[positions, None], self._end[positions, None]
            windows[key] = self._order[np.clip(wanted, start, end - 1)]
            pads[key] = torch.from_numpy((wanted < start) | (wanted >= end))
        rows = self._order[positions]
        frames = self._read_frames({cam: windows.get(cam, rows) for cam in self.camera_keys})
        items: list[dict[str, Any]] = []
        for b, row in enumerate(rows):
            item: dict[str, Any] = {}
            for cam in self.camera_keys:
                wanted = windows[cam][b] if cam in windows else row
                image = torch.stack([frames[cam][r] for r in wanted]) if cam in windows else frames[cam][row]
                item[cam] = self.image_transforms(image) if self.image_transforms else image
            for key, values in self._values.items():
                item[key] = torch.from_numpy(values[windows[key][b]]) if key in windows else torch.tensor(values[row])
            item.update({f"{key}_is_pad": pad[b] for key, pad in pads.items()})
            item["task"] = self._task_names[self._task_codes[row]]
            items.append(item)
        return items

    def _read_frames(self, rows: dict[str, np.ndarray]) -> dict[str, dict[int, torch.Tensor]]:
        """Decoded frames of the given table rows per camera, each distinct row read and decoded once."""
        ds = self._table() if rows else None
        out = {}
        for cam, cam_rows in rows.items():
            unique = np.unique(cam_rows).tolist()
            out[cam] = {r: decode_image(encoded) for r, encoded in zip(unique, ds[cam].get_bytes(unique))}
        return out
