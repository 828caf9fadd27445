"""Workflows: the only layer that reads and writes run folders (training runs, eval, activations, the
study pipeline, the budget series, ablations, report and plots)."""
