"""Benchmarks of the real train step: ``python -m dnjax.benchmark`` (throughput, compile time, FLOPs,
memory, side by side with PyTorch), ``python -m dnjax.benchmark.memory`` (memory versus depth) and
``python -m dnjax.benchmark.gpu`` (the whole GPU matrix and a short training run, within a time
budget; ``benchmarks/gpu.sh`` runs it on a GPU machine).

``measure`` builds and times the steps, ``table`` prints their rows, ``accelerator`` holds the
chips' datasheet figures, ``torch_reference`` the PyTorch networks (torch is an optional extra,
imported only there).
"""
