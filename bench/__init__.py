"""relay's benchmarks: `python -m bench` (see bench/README.md and docs/performance.md)."""
