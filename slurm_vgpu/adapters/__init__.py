"""One small module per outside system (Slurm, NVML), each with a real and a simulated backend behind
one interface. MPS has a package of its own, :mod:`slurm_vgpu.mps`."""
