"""Reading training snapshots in PyTorch: SnapshotDataset, collate, batch buffers.

Import torch-free code elsewhere: this package needs torch (``lerobot-assets[torch]``), and a
DataLoader worker imports nothing of Dagster or of the allocator setup of writing processes.
"""

from lerobot_assets.training.dataset import SnapshotDataset
from lerobot_assets.training.frames import collate
from lerobot_assets.training.sampler import ReadAheadBatches

__all__ = ["ReadAheadBatches", "SnapshotDataset", "collate"]
