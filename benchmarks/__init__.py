"""hf-egt benchmarks: `python -m benchmarks` (or `benchmarks/run`) runs every `bench_*.py` and prints one table."""
