"""Synthetic LeRobot datasets for the demo, tests and benchmarks."""
