"""The kit's checks: what each runs, what it measures against, and when it passes.

Every check that needs GPU time measures its figure and its baseline in this same run, after a
warm-up. They run in an order that keeps each baseline clean (the time-sliced clients before any MPS
daemon starts; the compute-mode change last, undone in its own ``finally``) and the table lists them
in :data:`CHECKS`' order. Every MPS daemon the kit starts is stopped in :meth:`Kit.run`'s ``finally``,
which is also the last row.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slurm_vgpu.adapters.gpus import ComputeMode, ComputeModeRefused, GpuRecord, InventoryError, NvmlInventory
from slurm_vgpu.config import Config
from slurm_vgpu.mps import GpuMps, MpsControl, MpsUnavailable

from .clients import Client, ClientError, mps_env, plain_env, run_together, started, stop_all
from .guard_driver import GuardDriver
from .table import Row, verdict

SHARE, MEMORY_MIB = 30, 2048  # the capped server's slice: 30% of the SMs, 2 GiB
SMALL_MIB, BIG_MIB = 512, 4096  # within and past the memory cap
SM_SHARE_MAX = 0.45  # the capped client's throughput against the uncapped one's, at most
COLOCATED = (1, 2, 4, 8)
GUARD_SHARE = 50  # the latency client's slice, and the trainer's
P99_SLACK = 1.1  # the guard may not make the latency client's p99 worse than plain MPS by more
INFER = {"batch": 4, "width": 1024, "depth": 4}  # a small-batch inference service
# a latency service at about a quarter of the GPU: busy by the guard's measure (GuardBusyUtilization)
LATENCY = {"batch": 64, "width": 8192, "depth": 8, "interval_ms": 2}

CHECKS = {
    "nvml inventory": "every GPU: GPU- uuid, /dev/nvidia<minor> exists, SMs > 0, memory > 0, compute capability",
    "mps control daemons": f"one per GPU, a server for this user, {SHARE}% and {MEMORY_MIB}M read back",
    "sm share": f"{SHARE}% vs 100% matmul throughput <= {SM_SHARE_MAX}",
    "memory cap": f"{SMALL_MIB} MiB allocated, {BIG_MIB} MiB past the {MEMORY_MIB}M cap refused: out of memory",
    **{f"co-location x{n}": ("MPS about as fast as alone (>= 0.8x)" if n == 1 else
                             "MPS >= time-sliced (FaST-GShare: 3.15x)") for n in COLOCATED},
    "slo guard": f"guard on: trainer held, p99 <= {P99_SLACK}x plain MPS's "
                 "(Herald: trainer -22% with SLO met; p99 2.5x under plain MPS)",
    "exclusive compute mode": "a client without the pipe refused; an MPS client served; prior mode restored",
    "mps stopped": "every daemon and server the kit started is gone",
}
CONSENT_FLAG = "--change-compute-mode"


@dataclass(frozen=True)
class Durations:
    warmup_s: float
    measure_s: float


FULL, QUICK = Durations(1.0, 4.0), Durations(0.5, 1.5)


class Skip(Exception):
    """A check that cannot run here, and why."""


class Kit:
    def __init__(self, quick: bool = False, change_compute_mode: bool = False,
                 mps_binary: str = "nvidia-cuda-mps-control"):
        self.durations = QUICK if quick else FULL
        self.change_compute_mode = change_compute_mode
        self.mps_binary = mps_binary
        self.rows: dict[str, Row] = {}
        self.gpus: list[GpuRecord] = []
        self.controls: list[MpsControl] = []
        self.servers: list[int] = []
        self.time_sliced: dict[int, float | str] = {}  # clients -> aggregate rate, or the row's result without one
        self.run_dir: Path | None = None

    # --- the run ---------------------------------------------------------------------------------

    def run(self) -> list[Row]:
        try:
            self.gpus = NvmlInventory().gpus()
            if not self.gpus:
                raise InventoryError("NVML lists no GPU")
        except (InventoryError, ImportError) as exc:
            return self._all_skipped(f"no GPU ({exc})")
        try:
            self._check("nvml inventory", self.inventory)
            if self._torch_missing() is None and self._mps_binary_missing() is None:
                try:
                    self.measure_time_sliced()
                except Exception as exc:
                    self.time_sliced = dict.fromkeys(COLOCATED, f"error: time-sliced baseline: {exc}")
            self._check("mps control daemons", self.mps_daemons)
            self._check(("sm share", "memory cap"), self.sm_share_and_memory_cap, torch=True, mps=True)
            self._check(tuple(f"co-location x{n}" for n in COLOCATED), self.colocation, torch=True, mps=True)
            self._check("slo guard", self.slo_guard, torch=True, mps=True)
            self._check("exclusive compute mode", self.exclusive_compute_mode, torch=True, mps=True)
        finally:
            stop_all()
            self._check("mps stopped", self.stop_mps)
            if self.run_dir is not None:
                shutil.rmtree(self.run_dir, ignore_errors=True)
        return self.table()

    def table(self) -> list[Row]:
        """Every check's row, in the table's order; one the run did not reach (interrupted) says so."""
        return [self.rows.get(name, Row(name, "skipped: not reached", "", expected))
                for name, expected in CHECKS.items()]

    def _all_skipped(self, why: str) -> list[Row]:
        return [Row(name, f"skipped: {why}", "", expected) for name, expected in CHECKS.items()]

    def _check(self, names: str | tuple[str, ...], check: Callable[[], object], torch: bool = False,
               mps: bool = False) -> None:
        """Run ``check``, which returns a (result, figure) per name (or one, for one name) or
        raises Skip; a check that raises anything else is an error row."""
        names = (names,) if isinstance(names, str) else names
        try:
            why = (self._torch_missing() if torch else None) or (self._mps_missing() if mps else None)
            if why is not None:
                raise Skip(why)
            outcome = check()
            outcomes = [outcome] if len(names) == 1 else outcome
            for name, (result, figure) in zip(names, outcomes):
                self.rows[name] = Row(name, result, figure, CHECKS[name])
        except Skip as skip:
            for name in names:
                self.rows.setdefault(name, Row(name, f"skipped: {skip}", "", CHECKS[name]))
        except (Exception, KeyboardInterrupt) as exc:
            what = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"[:300]
            for name in names:
                self.rows.setdefault(name, Row(name, f"error: {what}", "", CHECKS[name]))
            if isinstance(exc, KeyboardInterrupt):
                raise

    @staticmethod
    def _torch_missing() -> str | None:
        return None if importlib.util.find_spec("torch") else "torch is not installed"

    def _mps_missing(self) -> str | None:
        """Why the first GPU has no MPS server to measure on (caps read back wrong still measure)."""
        if self.servers:
            return None
        row = self.rows.get("mps control daemons")
        return f"needs an MPS server ({row.result if row else 'none started'})"

    @property
    def gpu(self) -> GpuRecord:
        """The GPU the measurements run on: the first one."""
        return self.gpus[0]

    # --- the checks ------------------------------------------------------------------------------

    def inventory(self) -> tuple[str, str]:
        problems = []
        for g in self.gpus:
            if not g.uuid.startswith("GPU-"):
                problems.append(f"gpu {g.index}: uuid {g.uuid!r}")
            if not Path(f"/dev/nvidia{g.minor}").exists():
                problems.append(f"gpu {g.index}: no /dev/nvidia{g.minor}")
            if g.sm_count <= 0 or g.memory_mib <= 0 or not re.fullmatch(r"\d+\.\d+", g.compute_capability):
                problems.append(f"gpu {g.index}: {g.sm_count} SMs, {g.memory_mib} MiB, cc {g.compute_capability!r}")
        figure = "; ".join(f"{g.index}: {g.model} {g.uuid[:12]}.. minor {g.minor}, {g.sm_count} SMs, "
                           f"{g.memory_mib} MiB, cc {g.compute_capability}" for g in self.gpus)
        return verdict(not problems), "; ".join(problems) or figure

    def measure_time_sliced(self) -> None:
        """The co-location baselines: the same clients with no MPS, before any daemon starts."""
        mode = NvmlInventory().compute_mode(self.gpu.uuid)
        if mode is not ComputeMode.DEFAULT:
            why = f"skipped: compute mode is {mode.name}: time-slicing needs DEFAULT"
            self.time_sliced = dict.fromkeys(COLOCATED, why)
            return
        with tempfile.TemporaryDirectory(prefix="kit-no-pipe-") as no_pipe:
            for n in COLOCATED:
                try:
                    self.time_sliced[n] = self._aggregate([plain_env(self.gpu, Path(no_pipe))] * n)
                except ClientError as exc:
                    self.time_sliced[n] = f"error: time-sliced clients: {exc}"

    def _mps_binary_missing(self) -> str | None:
        """MpsControl's own words when this node has no MPS control binary."""
        try:
            MpsControl(self.mps_binary, self.gpu.uuid, Path(), Path()).argv()
        except MpsUnavailable as exc:
            return str(exc)
        return None

    def mps_daemons(self) -> tuple[str, str]:
        why = self._mps_binary_missing()
        if why is not None:
            raise Skip(why)
        self.run_dir = Path(tempfile.mkdtemp(prefix="slurm-vgpu-kit-"))
        self.run_dir.chmod(0o755)
        config = Config(run_dir=self.run_dir, mps_control=self.mps_binary)
        uid, figures, ok = os.getuid(), [], True
        for g in self.gpus:
            control = GpuMps.of(config, g.uuid).control
            self.controls.append(control)  # stopped in run()'s finally, even half started
            control.ensure_running()
            server = control.ensure_server(uid)
            self.servers.append(server)
            control.set_limits(server, SHARE, MEMORY_MIB)
            share = control.command(f"get_active_thread_percentage {server}")
            memory = control.command(f"get_device_pinned_mem_limit {server} 0")
            ok &= _number(share) == SHARE and _mib(memory) == MEMORY_MIB
            figures.append(f"gpu {g.index}: daemon {control.daemon_pid()}, server {server} (uid {uid}), "
                           f"read back {' '.join(share)} / {' '.join(memory)}")
        return verdict(ok), "; ".join(figures)

    def sm_share_and_memory_cap(self) -> list[tuple[str, str]]:
        """The server's caps hold a client that asks for all of the GPU (its variable says 100%),
        against the same client on an uncapped server."""
        control, gpu, d = self.controls[0], self.gpu, self.durations
        server = self._fresh_server()
        (full,) = started("matmul", [mps_env(control, gpu, 100)], warmup_s=d.warmup_s)
        try:
            full_rate = full.ask(f"run {d.measure_s}")["rate"]
        finally:
            full.stop()
        control.set_limits(server, SHARE, MEMORY_MIB)
        (capped,) = started("matmul", [mps_env(control, gpu, 100)], warmup_s=d.warmup_s)
        try:
            capped_rate = capped.ask(f"run {d.measure_s}")["rate"]
            small, big = capped.ask(f"alloc {SMALL_MIB}"), capped.ask(f"alloc {BIG_MIB}")
        finally:
            capped.stop()
            self._fresh_server()  # the checks after this one measure without these caps
        ratio = capped_rate / full_rate
        share = (verdict(ratio <= SM_SHARE_MAX),
                 f"{SHARE}%: {capped_rate:.1f}/s, 100%: {full_rate:.1f}/s = {ratio:.2f}; "
                 f"SMs seen {capped.ready['sms']} vs {full.ready['sms']} (NVML {gpu.sm_count})")
        refused = not big["allocated"] and "out of memory" in big.get("error", "").lower()
        memory = (verdict(small["allocated"] and refused),
                  f"{SMALL_MIB} MiB: {_allocation(small)}; {BIG_MIB} MiB: {_allocation(big)}")
        return [share, memory]

    def colocation(self) -> list[tuple[str, str]]:
        """N small-batch inference clients, each given a slice of 100/N% under MPS, against the same
        clients time-sliced."""
        control, gpu = self.controls[0], self.gpu
        rows = []
        for n in COLOCATED:
            mps = self._aggregate([mps_env(control, gpu, 100 // n)] * n)
            baseline = self.time_sliced.get(n, "error: no time-sliced baseline")
            if isinstance(baseline, str):
                rows.append((baseline, f"MPS {mps:.0f}/s"))
                continue
            ratio = mps / baseline
            rows.append((verdict(ratio >= (0.8 if n == 1 else 1.0)),
                         f"MPS {mps:.0f}/s vs time-sliced {baseline:.0f}/s = {ratio:.2f}x"))
        return rows

    def slo_guard(self) -> tuple[str, str]:
        """A latency client and a best-effort trainer on one GPU under MPS: each alone, together,
        and together with the guard on."""
        control, gpu, d = self.controls[0], self.gpu, self.durations
        (latency,) = started("latency", [mps_env(control, gpu, GUARD_SHARE)], warmup_s=d.warmup_s, **LATENCY)
        trainer = None
        try:
            (trainer,) = started("trainer", [mps_env(control, gpu, GUARD_SHARE)], warmup_s=d.warmup_s)
            alone_p99 = latency.ask(f"run {d.measure_s}")["p99_ms"]
            alone_rate = trainer.ask(f"run {d.measure_s}")["rate"]
            plain = run_together([latency, trainer], d.measure_s)
            with GuardDriver(gpu, latency.pid, trainer.pid, GUARD_SHARE) as driver:
                guarded = run_together([latency, trainer], d.measure_s)
        finally:
            for client in (latency, trainer):
                if client is not None:
                    client.stop()
        (plain_lat, plain_tr), (guard_lat, guard_tr) = plain, guarded
        ok = driver.freezes > 0 and guard_lat["p99_ms"] <= P99_SLACK * plain_lat["p99_ms"]
        return verdict(ok), (
            f"p99 alone {alone_p99:.2f} ms, plain MPS {plain_lat['p99_ms']:.2f} ms "
            f"({plain_lat['p99_ms'] / alone_p99:.2f}x), guard {guard_lat['p99_ms']:.2f} ms "
            f"({guard_lat['p99_ms'] / alone_p99:.2f}x); trainer vs alone: plain MPS "
            f"{plain_tr['rate'] / alone_rate:.2f}, guard {guard_tr['rate'] / alone_rate:.2f}; "
            f"held {driver.freezes}x by {driver.how()}; latency slice busy in {driver.busy_looks}/{driver.looks} "
            f"looks, its process listed by NVML in {driver.looks_with_latency}")

    def exclusive_compute_mode(self) -> tuple[str, str]:
        """Under EXCLUSIVE_PROCESS the MPS server is the GPU's one context: a client that cannot reach
        the pipe (another user's, closed by the directory's ACL) gets none. Changes the GPU's mode, so
        only with the site's consent, and puts back exactly the mode it found."""
        if not self.change_compute_mode:
            raise Skip(f"changes the GPU's compute mode; run with {CONSENT_FLAG} where the site agrees")
        control, gpu = self.controls[0], self.gpu
        nvml = NvmlInventory()
        prior = nvml.compute_mode(gpu.uuid)
        try:
            nvml.set_compute_mode(gpu.uuid, ComputeMode.EXCLUSIVE_PROCESS)
        except ComputeModeRefused as exc:
            raise Skip(f"NVML refused to set EXCLUSIVE_PROCESS: {exc}") from None
        try:
            (served,) = started("infer", [mps_env(control, gpu, 100)], warmup_s=0.2, **INFER)
            with tempfile.TemporaryDirectory(prefix="kit-no-pipe-") as no_pipe:
                intruder = Client("infer", plain_env(gpu, Path(no_pipe)), warmup_s=0.2, **INFER)
                try:
                    intruder.wait_ready()
                    refused = None
                except ClientError as exc:
                    refused = str(exc)
                finally:
                    intruder.stop()
                    served.stop()
        finally:
            nvml.set_compute_mode(gpu.uuid, prior)
            restored = nvml.compute_mode(gpu.uuid)
        name = restored.name
        return verdict(refused is not None and restored == prior), (
            f"MPS client served; without the pipe: {'refused: ' + refused[:120] if refused else 'GOT A CONTEXT'}; "
            f"mode back to {name}")

    def stop_mps(self) -> tuple[str, str]:
        if not self.controls:
            raise Skip("no MPS daemon was started")
        servers = 0
        for control in self.controls:
            if control.running():
                for pid in control.servers().values():
                    control.shutdown_server(pid)
                    servers += 1
                control.quit()
        deadline = time.monotonic() + 30
        while any(c.running() for c in self.controls) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [c.gpu_uuid for c in self.controls if c.running()]
        return verdict(not left), (f"still running for {left}" if left else
                                   f"stopped {len(self.controls)} daemon(s), {servers} server(s)")

    # --- helpers ---------------------------------------------------------------------------------

    def _fresh_server(self) -> int:
        """Replace the first GPU's server by one with MPS's defaults (no caps), as a user's server is
        stopped when their last slice ends and started again for the next."""
        control, old = self.controls[0], self.servers[0]
        control.shutdown_server(old)
        deadline = time.monotonic() + 30
        while old in control.servers().values():
            if time.monotonic() > deadline:
                raise RuntimeError(f"MPS server {old} did not stop within 30 s of shutdown_server")
            time.sleep(0.1)
        self.servers[0] = control.ensure_server(os.getuid())
        return self.servers[0]

    def _aggregate(self, envs: list[dict[str, str]]) -> float:
        """The inferences per second of these clients together."""
        clients = started("infer", envs, warmup_s=self.durations.warmup_s, **INFER)
        try:
            return sum(r["rate"] for r in run_together(clients, self.durations.measure_s))
        finally:
            for client in clients:
                client.stop()


def _number(reply: list[str]) -> float | None:
    try:
        return float(reply[0])
    except (IndexError, ValueError):
        return None


_UNITS = {"": 1 / 2**20, "B": 1 / 2**20, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}


def _mib(reply: list[str]) -> float | None:
    """A memory size as MPS prints it (``2048M``, ``2G``, bytes), in MiB."""
    match = re.fullmatch(r"([\d.]+)\s*([KMGT]?)(?:i?B)?", reply[0].strip(), re.I) if reply else None
    return float(match.group(1)) * _UNITS[match.group(2).upper()] if match else None


def _allocation(reply: dict) -> str:
    return "allocated" if reply["allocated"] else f"refused ({reply.get('error', '')[:80]})"

