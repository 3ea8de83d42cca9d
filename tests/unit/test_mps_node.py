"""The slice file the prolog writes and the SPANK plugin reads."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_vgpu.db.models import ACTIVE_STATES
from slurm_vgpu.node import slice as slices
from slurm_vgpu.node import store
from slurm_vgpu.node.hooks import hook_script

SLICE = slices.Slice(42, "GPU-abc", 1, 30, 8192, Path("/run/v/mps/GPU-abc/pipe"), Path("/run/v/mps/GPU-abc/log"))


def test_slice_names_the_gpu_its_share_memory_and_pipe_dir():
    text = slices.render(SLICE, node_minors=[0, 1, 2], uvm_major=None)
    values = [line.split("=", 1) for line in text.splitlines() if not line.startswith("#")]
    assert values == [
        ["CUDA_VISIBLE_DEVICES", "GPU-abc"],
        ["CUDA_MPS_PIPE_DIRECTORY", "/run/v/mps/GPU-abc/pipe"],
        ["CUDA_MPS_LOG_DIRECTORY", "/run/v/mps/GPU-abc/log"],
        ["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "30"],
        ["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "0=8192M"],
        ["SLURM_STEP_GRES", "none"],  # srun steps share the job's slice rather than queue for it
        ["DEVICE_ALLOW", "c 195:1 rw"],
        ["DEVICE_ALLOW", "c 195:255 rw"],
        ["DEVICE_DENY", "c 195:0 rwm"],
        ["DEVICE_DENY", "c 195:2 rwm"],
    ]


def test_no_memory_cap_no_memory_variable_and_uvm_allowed():
    uncapped = slices.Slice(**{**SLICE.__dict__, "memory_mib": None})
    text = slices.render(uncapped, node_minors=[1], uvm_major=508)
    assert "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT" not in text
    assert "DEVICE_ALLOW=c 508:0 rw\nDEVICE_ALLOW=c 508:1 rw\n" in text
    assert "DEVICE_DENY" not in text


def test_uvm_major_is_read_from_proc_devices(tmp_path):
    devices = tmp_path / "devices"
    devices.write_text("Character devices:\n  1 mem\n195 nvidia\n508 nvidia-uvm\n\nBlock devices:\n508 other\n")
    assert slices.char_major("nvidia-uvm", devices) == 508
    assert slices.char_major("nvidia-caps", devices) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to root needs root")
def test_slice_file_is_root_owned_and_writable_by_root_only(tmp_path):
    path = slices.write(tmp_path / "jobs", 42, "CUDA_VISIBLE_DEVICES=GPU-abc\n")
    info = path.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o644)
    assert stat.S_IMODE((tmp_path / "jobs").stat().st_mode) == 0o755
    slices.remove(tmp_path / "jobs", 42)
    assert not path.exists()


def test_prolog_knows_the_same_active_states_as_the_schema():
    assert store.ACTIVE_STATES == ACTIVE_STATES


def test_the_hooks_and_what_they_drive_of_mps_import_no_sqlalchemy():
    """slurmd runs the prolog before every job's tasks: importing SQLAlchemy would cost more than it."""
    code = ("import sys, slurm_vgpu.node.__main__; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'alembic'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_hook_wrapper_names_its_config():
    script = hook_script("prolog", "/opt/venv/bin/python", Path("/etc/slurm/slurm-vgpu.conf"))
    assert script.startswith("#!/bin/sh\n")
    assert "exec /opt/venv/bin/python -m slurm_vgpu.node prolog --config /etc/slurm/slurm-vgpu.conf" in script
    with pytest.raises(ValueError, match="prolog or epilog"):
        hook_script("task-prolog", "python", Path("x"))


def test_the_slice_file_names_the_placement_the_epilog_releases(tmp_path):
    placed = slices.Slice(**{**SLICE.__dict__, "placement_id": 907})
    slices.write(tmp_path, 42, slices.render(placed, node_minors=[1], uvm_major=None))
    assert slices.placement_of(tmp_path, 42) == 907
    assert slices.placement_of(tmp_path, 43) is None  # no slice file: the prolog set none up
    slices.write(tmp_path, 44, slices.render(SLICE, node_minors=[1], uvm_major=None))
    assert slices.placement_of(tmp_path, 44) is None  # a file that names no placement releases none
