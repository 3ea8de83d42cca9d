"""The SPANK plugin's GPU fence on cgroup v2, against the kernel, without Slurm.

A job's cgroups are made the way Slurm's cgroup/v2 plugin lays them out (``<job>/step_0/user/task_N``
under ``<node>_slurmstepd.scope``), with device programs like Slurm's where Slurm 24.11 attaches them
(seen in its CGROUP debug log): at the job level for a batch step; at the job, step ``user`` and
each task's level for an srun step. Each denies every GPU (a vgpu job is given no gpu GRES) and one
other GRES device. A harness around the plugin's own device code (slice.c, cgroup2.c) applies the
slice file the prolog writes from inside a task cgroup, then fake device nodes are opened from
processes in the job's cgroups: ENXIO (no driver behind the node) means allowed, EPERM denied.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import shutil
import stat
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

from slurm_vgpu.node.slice import Slice, render
from slurm_vgpu.resources import SPANK

HARNESS = Path(__file__).resolve().parent / "spank" / "fence_harness.c"
GPUS = {f"nvidia{m}": (195, m) for m in range(4)} | {"nvidiactl": (195, 255)}
OTHERS = {"tun": (10, 200), "null": (1, 3)}  # tun: a GRES file of another kind, which Slurm denies
JOB_ID, OWN_MINOR = 7, 1


def unified_mount() -> Path | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] == "cgroup2" and fields[3] == "/":
            return Path(fields[4])
    return None


UNIFIED = unified_mount()
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or UNIFIED is None or shutil.which("gcc") is None or not Path("/usr/include/slurm/spank.h").exists(),
    reason="needs root, a cgroup2 mount, gcc and the Slurm headers")


# --- Slurm's side: a device program like the one cgroup/v2 attaches (src/plugins/cgroup/v2/ebpf.c) ---

BPF_PROG_LOAD, BPF_PROG_ATTACH = 5, 8  # Slurm attaches with ALLOW_OVERRIDE above the task level, none at it
BPF_PROG_TYPE_CGROUP_DEVICE, BPF_CGROUP_DEVICE, BPF_F_ALLOW_OVERRIDE = 15, 6, 1
SYS_BPF = {"x86_64": 321, "aarch64": 280}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | src << 4, off, imm)


def slurm_program(denied: list[tuple[int, int]]) -> bytes:
    """Deny each (major, minor) character device, allow everything else."""
    load = [insn(0x61, 2, 1, 0), insn(0x54, 2, imm=0xFFFF), insn(0x61, 3, 1, 0), insn(0x74, 3, imm=16),
            insn(0x61, 4, 1, 4), insn(0x61, 5, 1, 8)]
    checks = [i for major, minor in denied for i in (
        insn(0x55, 2, off=4, imm=2), insn(0x55, 4, off=3, imm=major), insn(0x55, 5, off=2, imm=minor),
        insn(0xB7, 0, imm=0), insn(0x95))]
    return b"".join(load + checks + [insn(0xB7, 0, imm=1), insn(0x95)])


def bpf(cmd: int, attr: ctypes.Array) -> int:
    result = libc.syscall(SYS_BPF, cmd, attr, ctypes.sizeof(attr))
    if result < 0:
        raise OSError(ctypes.get_errno(), f"bpf({cmd}) failed")
    return result


def attach_slurm_program(cgroup: Path, denied: list[tuple[int, int]], flags: int = BPF_F_ALLOW_OVERRIDE) -> None:
    code = ctypes.create_string_buffer(slurm_program(denied))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQ", attr, 0, BPF_PROG_TYPE_CGROUP_DEVICE, len(code.raw) // 8,
                     ctypes.addressof(code), ctypes.addressof(license_))
    attr[48:48 + 15] = b"Slurm_Cgroup_v2"
    program = bpf(BPF_PROG_LOAD, attr)
    directory = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        attr = ctypes.create_string_buffer(128)
        struct.pack_into("<IIII", attr, 0, directory, program, BPF_CGROUP_DEVICE, flags)
        bpf(BPF_PROG_ATTACH, attr)
    finally:
        os.close(directory)
        os.close(program)


# --- the job, its devices and the harness ---

class Job:
    def __init__(self, root: Path, name: str):
        self.dir = root / "system.slice" / "node1_slurmstepd.scope" / name
        self.user = self.dir / "step_0" / "user"
        self.stepd = self.dir / "step_0" / "slurm"  # slurmstepd's own cgroup: the job level's program
        for path in (self.user / "task_0", self.user / "task_1", self.stepd):
            path.mkdir(parents=True)

    def fence_like_slurm(self, step: str) -> None:
        """Slurm's programs for a batch step (the job level) or an srun step (also step and tasks)."""
        denied = [GPUS[f"nvidia{m}"] for m in range(4)] + [OTHERS["tun"]]
        attach_slurm_program(self.dir, denied)
        if step == "srun":
            attach_slurm_program(self.user, denied)
            for task in ("task_0", "task_1"):
                attach_slurm_program(self.user / task, denied, flags=0)


@pytest.fixture
def node(tmp_path):
    """The fake devices, the prolog's slice file for job 7 on GPU minor 1, the harness, and a
    cgroup subtree of our own that is removed (with every program attached in it) at the end."""
    devices = tmp_path / "dev"
    devices.mkdir()
    for name, (major, minor) in (GPUS | OTHERS).items():
        os.mknod(devices / name, stat.S_IFCHR | 0o666, os.makedev(major, minor))
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    slice_ = Slice(job_id=JOB_ID, gpu_uuid="GPU-1", gpu_minor=OWN_MINOR, share=30, memory_mib=None,
                   pipe_dir=tmp_path / "pipe", log_dir=tmp_path / "log")
    (jobs / str(JOB_ID)).write_text(render(slice_, node_minors=[0, 1, 2, 3], uvm_major=None))
    (jobs / str(JOB_ID)).chmod(0o644)
    harness = tmp_path / "fence_harness"
    subprocess.run(["gcc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", f"-I{SPANK}", "-o", str(harness),
                    str(HARNESS), str(SPANK / "slice.c"), str(SPANK / "cgroup2.c")], check=True)
    root = UNIFIED / f"slurm-vgpu-test-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    try:
        yield {"devices": devices, "jobs": jobs, "harness": harness, "root": root}
    finally:
        for directory in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            directory.rmdir()
        root.rmdir()


def run_in(node: dict, cgroup: Path, apply: bool = False) -> tuple[dict[str, str], str]:
    """Run the harness as a process of ``cgroup``; what each device's open gave, and its log."""
    def enter() -> None:
        (cgroup / "cgroup.procs").write_text("0")

    names = list(GPUS | OTHERS)
    argv = [str(node["harness"]), *((str(node["jobs"]), str(JOB_ID)) if apply else ("-", "-")),
            *(str(node["devices"] / n) for n in names)]
    result = subprocess.run(argv, capture_output=True, text=True, preexec_fn=enter)
    assert result.returncode == 0, result.stderr
    opened = dict(line.rsplit(" ", 1) for line in result.stdout.splitlines())
    return {n: errno.errorcode.get(int(opened[str(node["devices"] / n)]), "OK") for n in names}, result.stderr


ALL_GPUS_DENIED = {"nvidia0": "EPERM", "nvidia1": "EPERM", "nvidia2": "EPERM", "nvidia3": "EPERM",
                   "nvidiactl": "ENXIO", "tun": "EPERM", "null": "OK"}
OWN_GPU_ONLY = {"nvidia0": "EPERM", "nvidia1": "ENXIO", "nvidia2": "EPERM", "nvidia3": "EPERM",
                "nvidiactl": "ENXIO", "tun": "EPERM", "null": "OK"}


@pytest.mark.parametrize("step", ["batch", "srun"])
@pytest.mark.parametrize("job_dir", ["job_7", "s3H1M91R1V8700"], ids=["24.11 job_<id>", "26.05 SLUID"])
def test_the_task_reaches_its_own_gpu_and_slurm_still_decides_the_rest(node, job_dir, step):
    job, other = Job(node["root"], job_dir), Job(node["root"], "job_8")
    job.fence_like_slurm(step)
    other.fence_like_slurm(step)
    before, _ = run_in(node, job.user / "task_0")
    assert before == ALL_GPUS_DENIED  # Slurm's fence alone: the vgpu job cannot open its GPU

    after, log = run_in(node, job.user / "task_0", apply=True)
    assert after == OWN_GPU_ONLY, log
    assert "not applied" not in log and "cannot be extended" not in log
    # slurmstepd runs under the job level's program; another job keeps Slurm's fence
    assert run_in(node, job.stepd)[0] == OWN_GPU_ONLY
    assert run_in(node, other.user / "task_0")[0] == ALL_GPUS_DENIED
    # the step's other task: under the level above it until its own turn (srun: Slurm's program)
    assert run_in(node, job.user / "task_1")[0] == (OWN_GPU_ONLY if step == "batch" else ALL_GPUS_DENIED)
    # its turn finds the levels above fenced already, and leaves them as they are
    again, log = run_in(node, job.user / "task_1", apply=True)
    assert again == OWN_GPU_ONLY, log
    assert run_in(node, job.user / "task_0")[0] == OWN_GPU_ONLY


def test_without_slurms_fence_nothing_is_attached(node):
    job = Job(node["root"], "job_7")  # ConstrainDevices=no: the cgroups, no device program
    opened, log = run_in(node, job.user / "task_0", apply=True)
    assert "GPU device rules not applied" in log
    assert opened["nvidia0"] == opened["nvidia1"] == "ENXIO"
