"""Behaviour cloning on a snapshot: a tiny MLP from downscaled camera frames and the state to the action.

The loop a training job should follow: name its data by snapshot (dataset + tag), stream it with
SnapshotDataset, and log the table version the tag resolved to, so the run can be reproduced.
Frames arrive as uint8 (the fastest exact configuration: a quarter of float32's memory traffic)
and become LeRobot's float32 [0, 1] on the training device, in one line.

    python examples/train_bc.py                     # the demo dataset (`lerobot-assets demo`), its latest tag
    python examples/train_bc.py --dataset demo --tag run-001 --steps 300
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from lerobot_assets.core.errors import LeRobotAssetsError
from lerobot_assets.core.table.access import open_read_only
from lerobot_assets.runtime.home import Home, default_home
from lerobot_assets.runtime.registry import registry_of
from lerobot_assets.training import SnapshotDataset, collate

#: Frames are averaged down to this size (height, width) before the MLP: enough to see the arm move.
IMAGE_SIZE = (12, 16)


def latest_tag(dataset: str, home: Path) -> str:
    """The tag on the newest version of ``dataset``'s table (the last ``lerobot-assets snapshot``)."""
    ds = open_read_only(registry_of(Home(home)).dataset_source(dataset).table)
    names = list(ds.tags.names())
    if not names:
        raise LeRobotAssetsError(f"dataset {dataset!r} has no snapshot yet; run `lerobot-assets snapshot {dataset}`")
    position = {version.id: k for k, version in enumerate(ds.history)}
    return max(names, key=lambda name: (position.get(ds.tags[name].version, -1), ds.tags[name].timestamp))


class Policy(nn.Module):
    """Downscaled frames of every camera and the state in, one action out."""

    def __init__(self, cameras: int, state_dim: int, action_dim: int, hidden: int = 256) -> None:
        super().__init__()
        pixels = cameras * 3 * IMAGE_SIZE[0] * IMAGE_SIZE[1]
        self.vision = nn.Sequential(nn.Linear(pixels, 64), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(64 + state_dim, hidden), nn.ReLU(), nn.Linear(hidden, action_dim))

    def forward(self, images: list[torch.Tensor], state: torch.Tensor) -> torch.Tensor:
        small = [F.interpolate(image, size=IMAGE_SIZE, mode="area").flatten(1) - 0.5 for image in images]
        return self.head(torch.cat([self.vision(torch.cat(small, dim=1)), state], dim=1))


class Normalizer:
    """Mean/std normalization from the snapshot's stats; identity when the table has none."""

    def __init__(self, stats: dict[str, dict[str, np.ndarray]] | None) -> None:
        self.stats = stats or {}

    def __call__(self, key: str, value: torch.Tensor) -> torch.Tensor:
        if key not in self.stats:
            return value
        mean = torch.as_tensor(self.stats[key]["mean"], dtype=value.dtype, device=value.device)
        std = torch.as_tensor(self.stats[key]["std"], dtype=value.dtype, device=value.device)
        return (value - mean) / (std + 1e-8)


def main(argv: list[str] | None = None) -> list[float]:
    """Train, print the loss, and return the loss of every step."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="default: $LEROBOT_ASSETS_HOME, else ./.lerobot_assets")
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--tag", help="snapshot tag (default: the latest one)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    home = args.home or default_home()
    tag = args.tag or latest_tag(args.dataset, home)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset = SnapshotDataset(args.dataset, tag, home=home, image_dtype="uint8")
    print(f"snapshot: {asdict(dataset.snapshot)}", flush=True)
    print(f"{len(dataset)} frames, {dataset.num_episodes} episodes, cameras {dataset.camera_keys}, "
          f"normalization: {'snapshot stats' if dataset.stats else 'none (the table has no stats)'}", flush=True)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        collate_fn=collate, persistent_workers=args.workers > 0, pin_memory=device.type == "cuda")
    first = dataset[0]
    policy = Policy(len(dataset.camera_keys), first["observation.state"].numel(), first["action"].numel()).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.lr)
    normalize = Normalizer(dataset.stats)

    losses: list[float] = []
    since, samples = time.perf_counter(), 0
    while len(losses) < args.steps:
        for batch in loader:
            batch = {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
                     for key, value in batch.items()}
            images = [batch[camera].float().div_(255) for camera in dataset.camera_keys]  # == the float32 items
            predicted = policy(images, normalize("observation.state", batch["observation.state"]))
            loss = F.mse_loss(predicted, normalize("action", batch["action"]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            samples += len(batch["index"])
            if len(losses) == 1 or len(losses) % 25 == 0:
                rate, since, samples = samples / (time.perf_counter() - since), time.perf_counter(), 0
                print(f"step {len(losses):4d}  loss {losses[-1]:.4f}  {rate:7.1f} samples/s", flush=True)
            if len(losses) == args.steps:
                break
    window = max(1, min(10, len(losses) // 4))
    print(f"loss: {np.mean(losses[:window]):.4f} (first {window} steps) -> {np.mean(losses[-window:]):.4f} "
          f"(last {window}), snapshot {dataset.snapshot.dataset}@{dataset.snapshot.tag} "
          f"(version {dataset.snapshot.version})")
    return losses


if __name__ == "__main__":
    main()
