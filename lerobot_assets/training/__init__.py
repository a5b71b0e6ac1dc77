"""Reading training snapshots in PyTorch: SnapshotDataset, collate, batch buffers."""
