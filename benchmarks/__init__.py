"""Benchmarks beside the library: `python -m benchmarks.peer_benchmark` (see peer/README.md)."""
