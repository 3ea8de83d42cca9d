"""slurm-vgpu: fractional, SLO-aware NVIDIA GPU sharing for Slurm through MPS slices."""

__version__ = "0.1.0"
