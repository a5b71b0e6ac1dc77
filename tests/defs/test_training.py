"""SnapshotDataset on a real table built by ``ingest``, through real DataLoader workers (fork and spawn)."""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path
from typing import Any

import av
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, get_worker_info

from lerobot_assets.core.errors import TableError
from lerobot_assets.core.lerobot.meta import INDEX_DTYPES, read_dataset
from lerobot_assets.core.lerobot.stats import aggregate_stats, episode_stats
from lerobot_assets.core.media.codec import decode_rgb, encode_image
from lerobot_assets.core.table.access import open_tag
from lerobot_assets.runtime.commands import ingest, open_snapshot, snapshot
from lerobot_assets.runtime.home import Home
from lerobot_assets.runtime.registry import registry_of
from lerobot_assets.testing.synthetic import block_x, generate_dataset
from lerobot_assets.training import ReadAheadBatches, SnapshotDataset, collate

from tests.conftest import white_block_x
from tests.support.s3_server import S3Server
from tests.support.stats import image_stats

LENGTHS = (14, 9, 12)
TASKS = ("Pick up the shrimp", "Wipe the table", "Open the drawer")  # the generator's, one per episode
WIDTH = 128
FPS = 30
CAM_HIGH, CAM_WRIST = "observation.images.cam_high", "observation.images.cam_left_wrist"
VECTORS = ("observation.state", "action", "observation.effort")
HISTORY_AND_CHUNK = {
    CAM_HIGH: [-1 / FPS, 0.0],
    "observation.state": [-1 / FPS, 0.0],
    "action": [i / FPS for i in range(100)],  # ACT: longer than every episode, so the tail is padding
}


@pytest.fixture(scope="module")
def snap(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A generated dataset ingested episode 2 first, so the table does not hold episodes in order.

    Tag ``t1`` is the snapshot; ``stats`` are computed here independently, from the table's rows and
    (cameras) from the source videos decoded with PyAV, to compare with what the ingest stored.
    """
    root = tmp_path_factory.mktemp("training")
    source = generate_dataset(root / "src", episode_lengths=LENGTHS, tasks=TASKS, codec="libx264")
    home = root / "home"
    ingest(str(source), name="gen", home=home, episodes=[2], workers=1)
    ingest(str(source), name="gen", home=home, workers=1)
    tagged = snapshot("gen", tag="t1", home=home)
    ds = open_tag(tagged["table"], "t1")
    episode = np.asarray(ds["episode_index"][:])
    assert episode[0] == 2
    per_episode = []
    for index in np.unique(episode).tolist():
        rows = np.flatnonzero(episode == index).tolist()
        values = {key: np.asarray(ds[key][rows]) for key in (*VECTORS, *INDEX_DTYPES)}
        per_episode.append(episode_stats(values) | {cam: image_stats(f) for cam, f in _source_frames_png(source, index).items()})
    frames = [pd.read_parquet(p) for p in sorted((source / "data").rglob("*.parquet"))]
    rows = pd.concat(frames).sort_values("index").reset_index(drop=True)
    return {"home": home, "tagged": tagged, "rows": rows, "stats": aggregate_stats(per_episode)}


def _source_frames_png(source: Path, index: int) -> dict[str, list[bytes]]:
    """Each camera's frames of episode ``index`` decoded from the source MP4s with PyAV, as lossless PNG:
    the pixels ingest computes image stats from (before its JPEG encoding)."""
    meta = read_dataset(source)
    episode = meta.episode(index)
    out = {}
    for camera in (CAM_HIGH, CAM_WRIST):
        segment = episode.videos[camera]
        with av.open(str(source / segment.path)) as container:
            stream = container.streams.video[0]
            frames = [f for f in container.decode(stream) if f.pts * stream.time_base >= segment.from_timestamp - 1e-4]
        out[camera] = [encode_image(f.to_ndarray(format="rgb24"), "png") for f in frames[: episode.length]]
    return out


def _source(snap: dict, column: str) -> np.ndarray:
    return np.stack(snap["rows"][column].to_numpy())


def _episode_bounds(snap: dict, index: int) -> tuple[int, int]:
    """[start, end) of the global ``index`` values of the episode holding frame ``index``."""
    rows = snap["rows"]
    episode = rows.loc[rows["index"] == index, "episode_index"].item()
    members = rows.loc[rows["episode_index"] == episode, "index"]
    return int(members.min()), int(members.max()) + 1


def test_items_have_lerobot_layout_and_the_table_values(snap: dict) -> None:
    dataset = SnapshotDataset("gen", "t1", home=snap["home"])
    assert len(dataset) == sum(LENGTHS) and dataset.episodes == [0, 1, 2] and dataset.fps == FPS
    state, action = _source(snap, "observation.state"), _source(snap, "action")
    for i in range(len(dataset)):
        item = dataset[i]
        index = int(item["index"])
        assert index == i  # samples follow LeRobot's order, whatever the table's row order
        for camera in (CAM_HIGH, CAM_WRIST):
            image = item[camera]
            assert image.dtype == torch.float32 and image.shape == (3, 96, WIDTH)
            assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
            pixels = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            assert abs(white_block_x(pixels) - block_x(int(item["frame_index"]), WIDTH)) <= 1, (camera, i)
        assert torch.equal(item["observation.state"], torch.from_numpy(state[index]))
        assert torch.equal(item["action"], torch.from_numpy(action[index]))
        for key, dtype in (("timestamp", torch.float32), ("frame_index", torch.int64), ("episode_index", torch.int64),
                           ("index", torch.int64), ("task_index", torch.int64)):
            assert item[key].shape == () and item[key].dtype == dtype, key
            assert item[key].item() == pytest.approx(snap["rows"][key][index]), key
        assert item["task"] == TASKS[int(item["episode_index"])]


def test_delta_timestamps_read_the_right_frames_and_pad_at_episode_edges(snap: dict) -> None:
    dataset = SnapshotDataset("gen", "t1", home=snap["home"], delta_timestamps=HISTORY_AND_CHUNK)
    state, action = _source(snap, "observation.state"), _source(snap, "action")
    frame_index = snap["rows"]["frame_index"].to_numpy()
    for i in range(len(dataset)):
        item = dataset[i]
        index = int(item["index"])
        start, end = _episode_bounds(snap, index)
        for key, source, deltas in (("observation.state", state, [-1, 0]), ("action", action, range(100))):
            wanted = index + np.array(deltas)
            expected = source[np.clip(wanted, start, end - 1)]
            assert item[key].shape == expected.shape and torch.equal(item[key], torch.from_numpy(expected)), (key, i)
            assert item[f"{key}_is_pad"].tolist() == ((wanted < start) | (wanted >= end)).tolist(), (key, i)
        frames = item[CAM_HIGH]
        assert frames.shape == (2, 3, 96, WIDTH)
        assert item[f"{CAM_HIGH}_is_pad"].tolist() == [index == start, False]
        for frame, source_index in zip(frames, np.clip([index - 1, index], start, end - 1)):
            pixels = (frame.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            assert abs(white_block_x(pixels) - block_x(int(frame_index[source_index]), WIDTH)) <= 1, i
        assert item[CAM_WRIST].shape == (3, 96, WIDTH)  # no window asked for this camera
    last = dataset[LENGTHS[0] - 1]  # last frame of episode 0: one real action, 99 repeats of it
    assert last["action_is_pad"].tolist() == [False] + [True] * 99
    assert torch.equal(last["action"][-1], last["action"][0])


def test_episodes_and_query_restrict_samples_but_not_windows(snap: dict) -> None:
    home = snap["home"]
    by_episode = SnapshotDataset("gen", "t1", home=home, episodes=[0, 2])
    assert len(by_episode) == LENGTHS[0] + LENGTHS[2] and by_episode.episodes == [0, 2]
    assert {int(by_episode[i]["episode_index"]) for i in range(len(by_episode))} == {0, 2}

    wipe = SnapshotDataset("gen", "t1", home=home, query="SELECT * WHERE task == 'Wipe the table'")
    assert len(wipe) == LENGTHS[1] and wipe.episodes == [1]
    assert {wipe[i]["task"] for i in range(len(wipe))} == {"Wipe the table"}
    assert len(SnapshotDataset("gen", "t1", home=home, episodes=[0], query="SELECT * WHERE episode_index == 1")) == 0

    one = SnapshotDataset("gen", "t1", home=home, query="SELECT * WHERE episode_index == 1 AND frame_index == 4",
                          delta_timestamps={"observation.state": [k / FPS for k in range(-3, 4)]})
    assert len(one) == 1
    index = LENGTHS[0] + 4
    expected = _source(snap, "observation.state")[index - 3 : index + 4]  # neighbours that are not samples
    assert torch.equal(one[0]["observation.state"], torch.from_numpy(expected))
    assert not one[0]["observation.state_is_pad"].any()


def _collate_with_worker(items: list[dict[str, Any]]) -> tuple[dict[str, Any], int]:
    """Runs in the worker: the batch, and which worker made it."""
    return collate(items), get_worker_info().id


def _items_by_index(dataset: SnapshotDataset) -> dict[int, dict[str, Any]]:
    """Every item, read in this process (which also opens Deeplake here before workers fork)."""
    return {int(dataset[i]["index"]): dataset[i] for i in range(len(dataset))}


def _assert_batch_equals(batch: dict[str, Any], reference: dict[int, dict[str, Any]]) -> None:
    for b, index in enumerate(batch["index"].tolist()):
        for key, expected in reference[index].items():
            got = batch[key][b]
            assert got == expected if key == "task" else torch.equal(got, expected), (key, index)


def _assert_items_equal(items: list[dict[str, Any]], reference: dict[int, dict[str, Any]]) -> None:
    for item in items:
        expected = reference[int(item["index"])]
        assert all(item[k] == v if k == "task" else torch.equal(item[k], v) for k, v in expected.items())


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_return_identical_items(snap: dict, context: str) -> None:
    dataset = SnapshotDataset("gen", "t1", home=snap["home"], delta_timestamps=HISTORY_AND_CHUNK)
    reference = _items_by_index(dataset)
    loader = DataLoader(dataset, batch_size=5, shuffle=True, num_workers=2, multiprocessing_context=context,
                        collate_fn=_collate_with_worker, persistent_workers=True)
    served: dict[int, set[int]] = {}
    for _epoch in range(2):  # each epoch deals the samples out to the workers in another order
        seen = []
        for batch, worker in loader:
            _assert_batch_equals(batch, reference)
            for index in batch["index"].tolist():
                seen.append(index)
                served.setdefault(index, set()).add(worker)
        assert sorted(seen) == sorted(reference)
    assert any(len(workers) == 2 for workers in served.values())


def test_batches_the_training_loop_keeps_are_never_overwritten(snap: dict) -> None:
    """Workers refill their frame buffers, but only those the main process let go of (views count)."""
    dataset = SnapshotDataset("gen", "t1", home=snap["home"])
    reference = _items_by_index(dataset)
    loader = DataLoader(dataset, batch_size=3, shuffle=True, num_workers=2, collate_fn=collate, persistent_workers=True)
    kept, views = [], []
    for epoch in range(3):
        for n, batch in enumerate(loader):
            if epoch == 0:
                kept.append(batch)  # the whole first epoch stays alive until the end
            elif n % 2 == 0:
                views.append((int(batch["index"][1]), batch[CAM_HIGH][1]))  # only a view on the buffer survives
    for batch in kept:
        _assert_batch_equals(batch, reference)
    assert len(views) >= 10
    for index, image in views:
        assert torch.equal(image, reference[index][CAM_HIGH]), index


def test_workers_refill_frame_buffers_the_training_loop_dropped(snap: dict) -> None:
    """Allocating fresh shared memory per batch costs more than decoding it: buffers cycle instead."""
    dataset = SnapshotDataset("gen", "t1", home=snap["home"])
    reference = _items_by_index(dataset)
    loader = DataLoader(dataset, batch_size=2, shuffle=True, num_workers=2, collate_fn=collate, persistent_workers=True)
    received, buffers = 0, set()
    for _epoch in range(3):
        for batch in loader:
            _assert_batch_equals(batch, reference)
            for camera in (CAM_HIGH, CAM_WRIST):
                fd, _ = batch[camera].untyped_storage()._share_fd_cpu_()  # the shared-memory file it maps
                buffers.add(os.fstat(fd).st_ino)
                received += 1
    # Each worker has at most 2 batches queued and the loop holds 1 or 2: 2 workers x 4 x 2
    # cameras, plus the buffers of each epoch's last, shorter batch.
    assert received == 3 * 2 * 18 and len(buffers) <= 2 * 4 * 2 + 2


def test_telemetry_columns_are_built_once_per_batch_and_passed_on_whole(snap: dict) -> None:
    """Each telemetry column and padding mask of a batch is one tensor whose rows the items hold, so
    collate hands it on without stacking; through workers its buffers cycle like the frames'."""
    dataset = SnapshotDataset("gen", "t1", home=snap["home"], delta_timestamps=HISTORY_AND_CHUNK)
    reference = _items_by_index(dataset)
    items = dataset.__getitems__([3, 20, 0, 34])
    batch = collate(items)
    numeric = [key for key in items[0] if key != "task" and not key.startswith("observation.images.")]
    assert {"observation.state", "action", "index", "action_is_pad", "observation.state_is_pad"} <= set(numeric)
    for key in numeric:
        assert batch[key].untyped_storage().data_ptr() == items[0][key].untyped_storage().data_ptr(), key
        assert torch.equal(batch[key], torch.stack([item[key].clone() for item in items])), key
        assert batch[key].dtype == reference[0][key].dtype, key
    _assert_batch_equals(batch, reference)
    loader = DataLoader(dataset, batch_size=2, shuffle=True, num_workers=2, collate_fn=collate, persistent_workers=True)
    received, buffers = 0, set()
    for _epoch in range(3):
        for batch in loader:
            _assert_batch_equals(batch, reference)
            fd, _ = batch["action"].untyped_storage()._share_fd_cpu_()
            buffers.add(os.fstat(fd).st_ino)
            received += 1
    # as the frames' buffers: 2 workers x 4 in flight, plus each epoch's last, shorter batch
    assert received == 3 * 18 and len(buffers) <= 2 * 4 + 2


def test_snapshot_info_and_stats(snap: dict) -> None:
    plain = SnapshotDataset("gen", "t1", home=snap["home"], columns=["observation.state"])
    tagged = snap["tagged"]
    assert (plain.snapshot.tag, plain.snapshot.version, plain.snapshot.table) == (
        "t1", tagged["version"], tagged["table"])
    assert set(plain[0]) == {"observation.state", *INDEX_DTYPES, "task"} and plain.camera_keys == []
    assert plain.stats is not None and set(plain.stats) == set(snap["stats"])  # stored by the ingest
    for key, expected in snap["stats"].items():  # float32 stats come back as float64 from their JSON
        for name, value in expected.items():
            np.testing.assert_allclose(plain.stats[key][name], value, rtol=1e-6, err_msg=f"{key} {name}")


def test_invalid_requests_fail_with_what_to_fix(snap: dict) -> None:
    home = snap["home"]
    with pytest.raises(ValueError, match="not in"):
        SnapshotDataset("gen", "t1", home=home, columns=["observation.nope"])
    with pytest.raises(ValueError, match="multiples of 1/30"):
        SnapshotDataset("gen", "t1", home=home, delta_timestamps={"action": [0.01]})
    with pytest.raises(ValueError, match="not returned"):
        SnapshotDataset("gen", "t1", home=home, columns=[CAM_HIGH], delta_timestamps={"action": [0.0]})
    with pytest.raises(ValueError, match=r"episodes \[7\]"):
        SnapshotDataset("gen", "t1", home=home, episodes=[7])
    with pytest.raises(ValueError, match="'index' column"):
        SnapshotDataset("gen", "t1", home=home, query="SELECT frame_index WHERE episode_index == 1")
    with pytest.raises(TableError, match="no tag"):
        SnapshotDataset("gen", "nope", home=home)


def test_fast_jpeg_path_decodes_pillows_pixels(snap: dict) -> None:
    table = open_snapshot("gen", "t1", snap["home"])
    for encoded in table[CAM_HIGH].get_bytes([0, 5, 20]):
        with Image.open(io.BytesIO(encoded)) as image:
            assert np.array_equal(decode_rgb(encoded), np.asarray(image.convert("RGB")))


def test_train_bc_example_loss_goes_down(snap: dict, capsys: pytest.CaptureFixture) -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "train_bc.py"
    spec = importlib.util.spec_from_file_location("train_bc", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    losses = module.main(["--home", str(snap["home"]), "--dataset", "gen", "--steps", "40", "--batch-size", "8",
                          "--workers", "0"])
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert "samples/s" in capsys.readouterr().out.splitlines()[-2]  # the step-25 line, beside the loss


def test_uint8_items_equal_float32_items_after_conversion(snap: dict) -> None:
    floats = SnapshotDataset("gen", "t1", home=snap["home"], delta_timestamps=HISTORY_AND_CHUNK)
    uint8 = SnapshotDataset("gen", "t1", home=snap["home"], delta_timestamps=HISTORY_AND_CHUNK, image_dtype="uint8")
    for i in range(0, len(floats), 4):
        expected, got = floats[i], uint8[i]
        assert set(got) == set(expected)
        for camera in (CAM_HIGH, CAM_WRIST):
            assert got[camera].dtype == torch.uint8 and got[camera].shape == expected[camera].shape
            assert torch.equal(got[camera].float().div_(255), expected[camera]), (camera, i)  # the documented line
        assert torch.equal(got["action"], expected["action"]) and torch.equal(got["index"], expected["index"])
    loader = DataLoader(uint8, batch_size=4, num_workers=2, collate_fn=collate)
    batch = next(iter(loader))
    assert batch[CAM_HIGH].dtype == torch.uint8 and batch[CAM_HIGH].shape == (4, 2, 3, 96, WIDTH)
    assert torch.equal(batch[CAM_HIGH][3], uint8[3][CAM_HIGH])
    with pytest.raises(ValueError, match="image_dtype"):
        SnapshotDataset("gen", "t1", home=snap["home"], image_dtype="float16")


def _full_decode_and_area_resize(encoded: bytes, size: tuple[int, int]) -> np.ndarray:
    """The reference: Pillow's full-size decode, then an area (box) resize."""
    with Image.open(io.BytesIO(encoded)) as image:
        return np.asarray(image.convert("RGB").resize((size[1], size[0]), Image.Resampling.BOX)).astype(np.int16)


def _reduced_frame_errors(dataset: SnapshotDataset, table: Any, size: tuple[int, int]) -> np.ndarray:
    """Absolute differences of every item's frames at ``size`` from a full decode plus an area resize."""
    order = np.argsort(np.asarray(table["index"][:]))
    errors = []
    for camera in (CAM_HIGH, CAM_WRIST):
        encoded = table[camera].get_bytes(order.tolist())
        for i in range(len(dataset)):
            got = dataset[i][camera]
            assert got.dtype == torch.uint8 and got.shape == (3, *size)
            errors.append(np.abs(got.permute(1, 2, 0).numpy().astype(np.int16) - _full_decode_and_area_resize(encoded[i], size)))
    return np.stack(errors)


@pytest.mark.parametrize("size", [(48, 64), (40, 40)])
def test_image_size_equals_a_full_decode_plus_an_area_resize(snap: dict, size: tuple[int, int]) -> None:
    """JPEG frames are decoded at half scale in the DCT ((48, 64) exactly; (40, 40) then area-resized
    from 48x64). The DCT's scaling is not exactly a 2x2 mean: a hard edge can land a fraction of a
    pixel away, and chroma is not upsampled. Bound, per frame: mean absolute difference from a full
    decode plus an area resize <= 4 levels, and <= 10% of values off by more than 16 (the hard edges
    of these small synthetic frames). Measured: (48, 64) 1.65 and 1.1%, (40, 40) 3.1 and 6.1%; on
    480x640 frames at (240, 320), 0.5 (see docs/usage.md)."""
    dataset = SnapshotDataset("gen", "t1", home=snap["home"], image_dtype="uint8", image_size=size)
    errors = _reduced_frame_errors(dataset, open_snapshot("gen", "t1", snap["home"]), size)
    assert errors.mean(axis=(1, 2, 3)).max() <= 4
    assert (errors > 16).mean(axis=(1, 2, 3)).max() <= 0.10
    floats = SnapshotDataset("gen", "t1", home=snap["home"], image_size=size)
    assert torch.equal(floats[5][CAM_HIGH], dataset[5][CAM_HIGH].float() / 255)


def test_image_size_on_a_png_table_is_a_full_decode_plus_an_area_resize(tmp_path: Path) -> None:
    source = generate_dataset(tmp_path / "src", episode_lengths=[6], codec="libx264")
    ingest(str(source), name="png", home=tmp_path / "home", image_format="png", workers=1)
    snapshot("png", tag="t", home=tmp_path / "home")
    dataset = SnapshotDataset("png", "t", home=tmp_path / "home", image_dtype="uint8", image_size=(40, 50))
    assert not _reduced_frame_errors(dataset, open_snapshot("png", "t", tmp_path / "home"), (40, 50)).any()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is for machines without CUDA")
def test_cuda_decoding_falls_back_to_the_cpu_with_one_message(snap: dict, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="lerobot_assets.training"):
        dataset = SnapshotDataset("gen", "t1", home=snap["home"], image_dtype="uint8", decode_device="cuda")
        items = [dataset[i] for i in (0, 7)]
    assert [r.getMessage() for r in caplog.records] == [
        f"decode_device='cuda': torch {torch.__version__} sees no CUDA device, so frames are decoded on the CPU"]
    assert dataset.decode_device == "cpu"
    cpu = SnapshotDataset("gen", "t1", home=snap["home"], image_dtype="uint8")
    for item, i in zip(items, (0, 7)):
        assert item[CAM_HIGH].device.type == "cpu" and torch.equal(item[CAM_HIGH], cpu[i][CAM_HIGH])
    with pytest.raises(ValueError, match="decode_device"):
        SnapshotDataset("gen", "t1", home=snap["home"], decode_device="tpu")


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("torchvision") is None,
                    reason="needs a CUDA device and torchvision (nvJPEG)")
def test_cuda_decoding_matches_the_cpu_decoder(snap: dict) -> None:
    """nvJPEG and libjpeg-turbo may round the IDCT and the chroma upsampling differently: within 1 level on average."""
    gpu = SnapshotDataset("gen", "t1", home=snap["home"], image_dtype="uint8", decode_device="cuda",
                          delta_timestamps=HISTORY_AND_CHUNK)
    cpu = SnapshotDataset("gen", "t1", home=snap["home"], image_dtype="uint8", delta_timestamps=HISTORY_AND_CHUNK)
    assert gpu.decode_device == "cuda"
    for i in (0, 5, 20):
        got, expected = gpu[i][CAM_HIGH], cpu[i][CAM_HIGH]
        assert got.device.type == "cuda" and got.shape == expected.shape
        assert (got.cpu().int() - expected.int()).abs().float().mean() <= 1.0


def test_an_s3_snapshot_gives_the_same_items_as_the_local_one(snap: dict, tmp_path: Path) -> None:
    """The same source ingested into tables on a real S3-compatible server (moto, 127.0.0.1), read
    item by item, and through workers that read windows of contiguous samples ahead (range reads)."""
    home = snap["home"]
    source = registry_of(Home.at(home)).dataset_source("gen").source
    with S3Server() as s3:
        tables = f"s3://{s3.bucket}/tables"  # the registry is there: every call names the root
        ingest(source, name="gen", home=tmp_path / "home", tables=tables, workers=1)
        snapshot("gen", tag="t1", home=tmp_path / "home", tables=tables)
        remote = SnapshotDataset("gen", "t1", home=tmp_path / "home", delta_timestamps=HISTORY_AND_CHUNK, tables=tables)
        assert remote.snapshot.table == f"s3://{s3.bucket}/tables/gen"
        reference = _items_by_index(SnapshotDataset("gen", "t1", home=home, delta_timestamps=HISTORY_AND_CHUNK))
        assert sorted(_items_by_index(remote)) == sorted(reference)
        for sampler in (ReadAheadBatches(len(remote), 5, num_workers=2),
                        ReadAheadBatches(len(remote), 5, num_workers=2, window=10, block=4)):
            seen = []
            for batch in DataLoader(remote, batch_sampler=sampler, num_workers=2, collate_fn=collate):
                _assert_batch_equals(batch, reference)
                seen += batch["index"].tolist()
            assert sorted(seen) == sorted(reference)


def test_read_ahead_batches_name_each_workers_next_batch_and_leave_items_unchanged(snap: dict) -> None:
    sampler = ReadAheadBatches(23, 4, num_workers=2, generator=torch.Generator().manual_seed(0))
    batches = list(sampler)
    assert len(batches) == len(sampler) == 6 and sorted(i for b in batches for i in b) == list(range(23))
    assert [b.ahead for b in batches] == [*batches[2:], [], []]
    assert len(list(ReadAheadBatches(23, 4, num_workers=2, drop_last=True))) == 5
    assert list(ReadAheadBatches(10, 4, num_workers=0, shuffle=False)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]

    dataset = SnapshotDataset("gen", "t1", home=snap["home"], delta_timestamps=HISTORY_AND_CHUNK)
    reference = _items_by_index(dataset)
    in_order = list(ReadAheadBatches(len(dataset), 6, num_workers=0))
    for batch, upcoming in zip(in_order, [*in_order[1:], []]):
        items = dataset.__getitems__(batch)
        assert set(dataset._held[1]) == {tuple(batch), tuple(upcoming)} - {()}  # reading the next batch has started
        _assert_items_equal(items, reference)
    assert set(dataset._held[1]) == {tuple(in_order[-1])}


class _WhichWorker(torch.utils.data.Dataset):
    """Items that say which DataLoader worker built them."""

    def __len__(self) -> int:
        return 70

    def __getitems__(self, indices: list[int]) -> list[int]:
        return [get_worker_info().id] * len(indices)


def test_the_dataloader_deals_windows_to_the_workers_they_were_made_for() -> None:
    """What windows rely on: batch k of the sampler goes to worker k % num_workers, in every epoch,
    also with persistent workers (each worker then reads only its own windows)."""
    sampler = ReadAheadBatches(70, 4, num_workers=2, window=12, block=4)
    loader = DataLoader(_WhichWorker(), batch_sampler=sampler, num_workers=2, persistent_workers=True,
                        collate_fn=lambda workers: workers[0])
    for _ in range(2):
        assert list(loader) == [k % 2 for k in range(len(sampler))]


def test_read_ahead_windows_deal_each_worker_whole_windows_of_contiguous_blocks(snap: dict) -> None:
    """Windows of 12 samples from blocks of 4 consecutive ones, batches of 4, 2 workers: the DataLoader
    deals batch k to worker k % 2, so each worker's batches run through its windows in order."""
    sampler = ReadAheadBatches(35, 4, num_workers=2, window=12, block=4, generator=torch.Generator().manual_seed(1))
    batches = list(sampler)
    assert len(batches) == len(sampler) == 9 and sorted(i for b in batches for i in b) == list(range(35))
    for worker in (0, 1):
        mine = batches[worker::2]
        windows = [list(w) for w in dict.fromkeys(tuple(b.window) for b in mine)]
        assert [i for w in windows for i in w] == [i for b in mine for i in b]  # whole windows, in a row
        for b in mine:
            assert set(b) <= set(b.window) and b.ahead == (windows[windows.index(b.window) + 1]
                                                             if b.window != windows[-1] else [])
        for w in windows:  # at most window // block blocks of consecutive samples
            assert len(w) <= 12 and len({i // 4 for i in w}) <= 3
    assert [len(b) for b in ReadAheadBatches(35, 4, num_workers=2, window=12, block=4, drop_last=True)] == [4] * 8
    assert list(ReadAheadBatches(10, 4, num_workers=1, shuffle=False, window=8, block=3)) == [[0, 1, 2, 3],
                                                                                               [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="window >= batch_size"):
        ReadAheadBatches(10, 4, num_workers=1, window=2)

    dataset = SnapshotDataset("gen", "t1", home=snap["home"], delta_timestamps=HISTORY_AND_CHUNK)
    reference = _items_by_index(dataset)
    in_process = list(ReadAheadBatches(len(dataset), 5, num_workers=0, window=15, block=5))
    for batch in in_process:
        items = dataset.__getitems__(batch)
        assert set(dataset._held[1]) == {tuple(batch.window), tuple(batch.ahead)} - {()}
        assert [int(item["index"]) for item in items] == [int(reference_index) for reference_index in
                                                            np.asarray(sorted(reference))[batch]]
        _assert_items_equal(items, reference)
    for batch in ReadAheadBatches(len(dataset), 5, num_workers=3, window=15, block=5):  # all in one process
        _assert_items_equal(dataset.__getitems__(batch), reference)  # each batch's window is not the last one's
    odd = ReadAheadBatches(len(dataset), 5, num_workers=1, window=15, block=5)
    stray = list(odd)[0]
    stray.window = list(range(len(dataset) - 5, len(dataset)))  # a window that does not hold the batch
    assert [int(item["index"]) for item in dataset.__getitems__(stray)] == [
        int(i) for i in np.asarray(sorted(reference))[list(stray)]]
