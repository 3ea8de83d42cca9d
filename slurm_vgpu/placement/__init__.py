"""The placement service: reads held vgpu jobs, decides with the pure policy, commits, pins in Slurm."""
