"""Measurements beside the core path: the quality report, the tutorial's ablation, training and serving
benchmarks. The core (train/, handler/, scripts/) never imports this package; each command here writes
its results page under docs/."""
