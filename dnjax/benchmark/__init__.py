"""Benchmarks of the real train step: ``python -m dnjax.benchmark`` (throughput, compile time, FLOPs,
memory, side by side with PyTorch) and ``python -m dnjax.benchmark.memory`` (memory versus depth).

``measure`` builds and times the steps, ``torch_reference`` holds the PyTorch networks (torch is
an optional extra, imported only there).
"""
