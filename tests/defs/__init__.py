"""The asset graph in process on a real instance: ingest, relabel, snapshots, training reads."""
