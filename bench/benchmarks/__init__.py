"""asv benchmarks of qlgrad, and the modules the benchmark scripts share with them.

Benchmarks: ``backward``, ``forward``, ``memory``, ``lowbit``, ``model``, ``llm``. Shared modules,
which define no benchmark: ``workloads`` (the layers and operations ``bench/compare.py`` times
too), ``decoder`` and ``decoder_modes`` (the decoder, its training run and modes, with
``bench/llm.py``), ``timing``, ``machine``, ``reporting``, ``plots`` and ``comparison`` (the
scripts' timing, machine probes, tables, targets, charts, and compare.py's rows)."""
