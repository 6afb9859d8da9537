"""Experiments: measured comparisons of selection methods (every number computed here)."""
