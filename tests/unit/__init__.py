"""Pure data modules (no Dagster): statistics, synthetic data, video, the lease, pinning."""
