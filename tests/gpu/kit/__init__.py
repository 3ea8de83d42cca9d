"""The GPU validation kit behind ``tests/gpu/run``: its checks, its CUDA clients, its table."""
