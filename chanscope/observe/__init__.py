"""The paper's observation machinery: forward hooks, channel relevance, the per-class analysis and the
verdict rules."""
