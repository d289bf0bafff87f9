"""Benchmarks of bngraph against PyTorch on the CPU: ``python -m benchmarks`` (see __main__.py and
docs/benchmarks.md); ``benchmarks/profile_step.py`` profiles one step."""
