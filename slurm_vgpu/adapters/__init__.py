"""One small module per outside system (Slurm, Postgres, NVML, MPS), each with a real and a simulated
backend behind one interface."""
