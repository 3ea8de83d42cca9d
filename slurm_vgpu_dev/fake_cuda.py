"""A stand-in for a CUDA client on simulated GPUs: it reports GPU memory and SM use for its own PID,
as NVML would, in the simulated inventory's usage directory, then sleeps until it is killed.

Run inside a job: ``python -m slurm_vgpu_dev.fake_cuda --usage-dir DIR --mib 512 --util 0.8``.
The GPU is the job's ``CUDA_VISIBLE_DEVICES`` (a UUID, as the slice sets it). ``--ready FILE`` is
written once the usage is reported, so tests know the agent can see it.

It models how a CUDA client reaches its GPU: where ``CUDA_MPS_PIPE_DIRECTORY`` (default
``/tmp/nvidia-mps``) reaches a running control daemon for its GPU it is an MPS client, in its
server's context; otherwise it runs "as it normally would without MPS" and asks the simulated GPU
for a context of its own, which a GPU that is EXCLUSIVE_PROCESS refuses while its MPS server holds
it: the client then fails with CUDA's words, cudaErrorDevicesUnavailable.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from slurm_vgpu.adapters.gpus import ContextRefused, SimulatedInventory

from . import fake_mps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slurm_vgpu_dev.fake_cuda")
    parser.add_argument("--usage-dir", type=Path, required=True, help="SimulatedInventory.usage_dir of the node")
    parser.add_argument("--mib", type=int, required=True, help="GPU memory to report, MiB")
    parser.add_argument("--util", type=float, default=0.0, help="SM use to report, 0..1 of the GPU")
    parser.add_argument("--seconds", type=float, default=3600.0, help="how long to run")
    parser.add_argument("--ready", type=Path, help="file to write (our PID) once the usage is reported")
    args = parser.parse_args(argv)
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if not gpu.startswith("GPU-"):
        print(f"fake_cuda: CUDA_VISIBLE_DEVICES={gpu!r} names no GPU UUID; run me in a vgpu job", file=sys.stderr)
        return 1
    device = SimulatedInventory.of_usage_dir(args.usage_dir)
    mps = fake_mps.serves(fake_mps.pipe_dir(), gpu)
    if not mps:
        try:
            device.hold_context(gpu, os.getpid())
        except ContextRefused as exc:
            print(f"fake_cuda: CUDA error: {exc}", file=sys.stderr)
            return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report = device.report_usage(gpu, os.getpid(), args.mib, args.util)
    try:
        if args.ready:
            args.ready.write_text(f"{os.getpid()}\n")
        how = "MPS client" if mps else "own context"
        print(f"fake_cuda: pid {os.getpid()} on {gpu} ({how}): {args.mib} MiB, SM use {args.util:g}", flush=True)
        time.sleep(args.seconds)
    finally:
        report.unlink(missing_ok=True)
        if not mps:
            device.release_context(gpu, os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
