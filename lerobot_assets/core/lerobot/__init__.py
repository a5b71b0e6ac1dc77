"""LeRobot datasets: metadata, telemetry, fingerprints, normalization statistics."""
