"""asv benchmarks of qlgrad; ``workloads`` is shared with ``bench/compare.py``."""
