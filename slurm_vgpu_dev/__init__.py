"""slurm-vgpu's development kit: a real Slurm cluster on one machine with simulated GPUs, and the
stand-ins for what such a machine lacks (the MPS control daemon, CUDA clients). Nothing in the
``slurm_vgpu`` package imports it; the demo, the tests and the benchmarks do."""
