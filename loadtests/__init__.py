"""Whole-engine load scenarios: each runs the engine beside a baseline measured in the same run."""
