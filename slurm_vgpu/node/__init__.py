"""The node path of a vgpu job: Slurm's prolog and epilog (run as root by slurmd, scrubbed
environment, no Slurm commands, well under MessageTimeout) set up and tear down the job's MPS slice
and write the root-owned slice file the SPANK plugin applies to each task."""
