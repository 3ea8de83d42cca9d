"""GPU inventory: NVML on a real node, an inventory file on a simulated one; same records either way.

Besides what a GPU is, what is set on it: its compute mode. A GPU that carries slices is
EXCLUSIVE_PROCESS, so that only its MPS server may hold a context there (:mod:`slurm_vgpu.mps.gpu`).
"""
from __future__ import annotations

import enum
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from ..catalog import short_name
from .processes import start_ticks


@dataclass(frozen=True)
class GpuRecord:
    index: int
    uuid: str
    name: str  # NVML device name
    model: str  # short model name: h100, a100, t4, ...
    sm_count: int
    memory_mib: int
    compute_capability: str
    # /dev/nvidia<minor>: the driver's minor number (nvmlDeviceGetMinorNumber), which NVML does not
    # promise equals the index; files written before it was recorded give none, read as the index
    minor: int | None = None

    def __post_init__(self) -> None:
        if self.minor is None:
            object.__setattr__(self, "minor", self.index)

    @property
    def gres_type(self) -> str:
        """The per-GPU typed vgpu record this GPU gets in Slurm, e.g. ``h100_0``."""
        return f"{self.model}_{self.index}"

    @staticmethod
    def model_of(gres_type: str) -> str:
        """The model of a GPU from its per-GPU GRES type: ``h100_0`` -> ``h100``."""
        return gres_type.rsplit("_", 1)[0]


@dataclass(frozen=True)
class GpuProcess:
    """A compute process on one GPU: its memory and, when sampled, its share of the GPU's SMs."""

    pid: int
    used_mib: int
    sm_util: float | None = None  # 0..1 of the whole GPU; None when NVML has no sample for it


class ComputeMode(enum.Enum):
    """NVML's compute modes (``nvmlComputeMode_t``)."""

    DEFAULT = 0  # any number of processes may hold a context on the GPU
    EXCLUSIVE_THREAD = 1  # gone since CUDA 8; read, never set
    PROHIBITED = 2  # no process may
    EXCLUSIVE_PROCESS = 3  # one process may: under MPS, the MPS server, whose clients share its context


class GpuInventory(Protocol):
    def gpus(self) -> list[GpuRecord]:
        """The node's healthy GPUs; a GPU NVML reports lost (or the file marks lost) is left out."""
        ...

    def processes(self, uuid: str) -> list[GpuProcess]: ...

    def utilization(self, uuid: str) -> float | None:
        """The GPU's busy ratio (0..1) over NVML's last sample period; None when unknown."""
        ...

    def compute_mode(self, uuid: str) -> ComputeMode: ...

    def set_compute_mode(self, uuid: str, mode: ComputeMode) -> None:
        """Set the GPU's compute mode; :class:`ComputeModeRefused` when the GPU or our rights do not allow it."""
        ...


class InventoryError(RuntimeError):
    pass


class ComputeModeRefused(InventoryError):
    """The GPU's compute mode cannot be set here (NVML: no permission, or not supported)."""


class ContextRefused(RuntimeError):
    """A simulated GPU refused a CUDA context, as CUDA does with cudaErrorDevicesUnavailable."""


class SimulatedInventory:
    """Reads a JSON inventory file: ``{"node": "...", "gpus": [GpuRecord fields..., "lost": true?]}``.

    Processes are what fake CUDA clients (``python -m slurm_vgpu_dev.fake_cuda``) report: one JSON
    file per process, ``<usage dir>/<gpu uuid>/<pid>`` = ``{"used_mib": N, "sm_util": 0..1,
    "started": its start time}``, where the usage directory sits beside the inventory file
    (``node1.json`` -> ``node1.usage``).

    This models a GPU's compute mode and contexts too. The mode is one small file per GPU,
    ``<modes dir>/<gpu uuid>`` (``node1.modes``, root's, 0755; the file 0644, replaced whole): a
    file per GPU, so prologs on different GPUs never write the same file, and two on one GPU are
    serialised by that GPU's lock. No file: DEFAULT, as a GPU after boot. A context is held by a
    process recorded in ``<contexts dir>/<gpu uuid>/<pid>`` (its start time) while it lives
    (``node1.contexts``: a fake CUDA client outside MPS records its own, the fake MPS daemon its
    servers'); under EXCLUSIVE_PROCESS the GPU gives no second process one.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)

    @classmethod
    def of_usage_dir(cls, usage_dir: Path) -> SimulatedInventory:
        """The inventory whose usage directory that is (what a fake CUDA client is given)."""
        return cls(usage_dir.with_suffix(".json"))

    @property
    def usage_dir(self) -> Path:
        return self.path.with_suffix(".usage")

    @property
    def modes_dir(self) -> Path:
        return self.path.with_suffix(".modes")

    @property
    def contexts_dir(self) -> Path:
        return self.path.with_suffix(".contexts")

    def gpus(self) -> list[GpuRecord]:
        try:
            doc = json.loads(self.path.read_text())
            return [GpuRecord(**{k: v for k, v in g.items() if k != "lost"}) for g in doc["gpus"] if not g.get("lost")]
        except FileNotFoundError as exc:
            raise InventoryError(f"simulated GPU inventory {self.path} does not exist") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise InventoryError(
                f"simulated GPU inventory {self.path} is malformed ({exc}); expected "
                '{"gpus": [{"index", "uuid", "name", "model", "sm_count", "memory_mib", '
                '"compute_capability"}]}'
            ) from exc

    @staticmethod
    def write(path: Path, node: str, gpus: list[GpuRecord]) -> None:
        path.write_text(json.dumps({"node": node, "gpus": [asdict(g) for g in gpus]}, indent=2) + "\n")

    def processes(self, uuid: str) -> list[GpuProcess]:
        """Live reporting clients; a file left by a client that died without cleaning up is ignored,
        also once its PID is given to another process."""
        found = []
        for path in sorted((self.usage_dir / uuid).glob("[0-9]*")):
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if _alive(int(path.name), doc.get("started")):
                found.append(GpuProcess(int(path.name), int(doc["used_mib"]), float(doc.get("sm_util", 0.0))))
        return found

    def report_usage(self, uuid: str, pid: int, used_mib: int, sm_util: float) -> Path:
        """Record process ``pid``'s use of the GPU, as NVML would list it (a fake CUDA client's own
        report); returns the record, which the process removes when it ends."""
        directory = self.usage_dir / uuid
        directory.mkdir(parents=True, exist_ok=True)
        report = directory / str(pid)
        tmp = report.with_suffix(".tmp")
        tmp.write_text(json.dumps({"used_mib": used_mib, "sm_util": sm_util, "started": start_ticks(pid)}) + "\n")
        tmp.replace(report)
        return report

    def utilization(self, uuid: str) -> float | None:
        return min(1.0, sum(p.sm_util or 0.0 for p in self.processes(uuid)))

    def compute_mode(self, uuid: str) -> ComputeMode:
        try:
            return ComputeMode[(self.modes_dir / uuid).read_text().strip()]
        except FileNotFoundError:
            return ComputeMode.DEFAULT

    def set_compute_mode(self, uuid: str, mode: ComputeMode) -> None:
        """Only root may, as with NVML; the file is replaced whole, so a reader sees one mode or the other."""
        if os.geteuid() != 0:
            raise ComputeModeRefused(f"setting the compute mode of {uuid} needs root (NVML: Insufficient Permissions)")
        self.modes_dir.mkdir(mode=0o755, exist_ok=True)
        tmp = self.modes_dir / f".{uuid}.{os.getpid()}"
        tmp.write_text(mode.name + "\n")
        tmp.chmod(0o644)
        tmp.replace(self.modes_dir / uuid)

    def hold_context(self, uuid: str, pid: int) -> None:
        """Give process ``pid`` a context on the GPU, as CUDA's first call does; :class:`ContextRefused`
        while the GPU is EXCLUSIVE_PROCESS and another live process holds one. Two at once are
        told apart, as by the driver: the GPU's contexts directory is locked meanwhile."""
        directory = self.contexts_dir / uuid
        for each in (self.contexts_dir, directory):  # any user's process may hold a context: sticky, as /tmp
            try:
                each.mkdir()
                each.chmod(0o1777)
            except FileExistsError:
                pass
        handle = os.open(directory, os.O_RDONLY)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            holders = [p for p in self.context_holders(uuid) if p != pid]
            if self.compute_mode(uuid) is ComputeMode.EXCLUSIVE_PROCESS and holders:
                raise ContextRefused("all CUDA-capable devices are busy or unavailable (cudaErrorDevicesUnavailable): "
                                     f"{uuid} is EXCLUSIVE_PROCESS and process {holders[0]} holds its context")
            (directory / str(pid)).write_text(f"{start_ticks(pid)}\n")
        finally:
            os.close(handle)

    def release_context(self, uuid: str, pid: int) -> None:
        (self.contexts_dir / uuid / str(pid)).unlink(missing_ok=True)

    def context_holders(self, uuid: str) -> list[int]:
        """Live processes holding a context on the GPU (a record left by a dead one is ignored)."""
        holders = []
        for path in sorted((self.contexts_dir / uuid).glob("[0-9]*")):
            try:
                started = int(path.read_text())
            except (FileNotFoundError, ValueError):
                continue
            if _alive(int(path.name), started):
                holders.append(int(path.name))
        return holders


class NvmlInventory:
    """Real GPUs through nvidia-ml-py (the maintained ``pynvml`` module)."""

    def gpus(self) -> list[GpuRecord]:
        with _nvml() as pynvml:
            records = []
            for index in range(pynvml.nvmlDeviceGetCount()):
                try:
                    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                    name = _text(pynvml.nvmlDeviceGetName(handle))
                except pynvml.NVMLError_GpuIsLost:
                    continue
                major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
                records.append(
                    GpuRecord(
                        index=index,
                        uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                        name=name,
                        model=short_name(name),
                        sm_count=_sm_count(pynvml, handle),
                        memory_mib=pynvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024),
                        compute_capability=f"{major}.{minor}",
                        minor=pynvml.nvmlDeviceGetMinorNumber(handle),
                    )
                )
            return records

    def processes(self, uuid: str) -> list[GpuProcess]:
        """Compute processes, MPS clients included, with their memory and, where NVML sampled them
        since the last call's window, their SM use. NVML lists MPS clients apart
        (``nvmlDeviceGetMPSComputeRunningProcesses``) from other compute processes, the GPU's MPS
        server among them: both lists are read, each pid once (its larger reading), and the server
        is left out, since it is no job's."""
        with _nvml() as pynvml:
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
            try:
                samples = {s.pid: s.smUtil / 100 for s in pynvml.nvmlDeviceGetProcessUtilization(handle, 0)}
            except pynvml.NVMLError:  # NotFound when no process ran in the window; NotSupported
                samples = {}
            clients = pynvml.nvmlDeviceGetMPSComputeRunningProcesses(handle)
            used: dict[int, int] = {}
            for p in [*pynvml.nvmlDeviceGetComputeRunningProcesses(handle), *clients]:
                used[p.pid] = max(used.get(p.pid, 0), (p.usedGpuMemory or 0) // (1024 * 1024))
            client_pids = {p.pid for p in clients}
            return [GpuProcess(pid, mib, samples.get(pid)) for pid, mib in sorted(used.items())
                    if pid in client_pids or not _is_mps_server(pynvml, pid)]

    def compute_mode(self, uuid: str) -> ComputeMode:
        with _nvml() as pynvml:
            try:
                return ComputeMode(pynvml.nvmlDeviceGetComputeMode(pynvml.nvmlDeviceGetHandleByUUID(uuid)))
            except pynvml.NVMLError as exc:
                raise InventoryError(f"NVML cannot read the compute mode of {uuid}: {exc}") from exc

    def set_compute_mode(self, uuid: str, mode: ComputeMode) -> None:
        """The mode applies to contexts created after it: one a process already holds stays (NVML
        sets it all the same), which is why a GPU is checked for processes before it is made exclusive."""
        with _nvml() as pynvml:
            try:
                pynvml.nvmlDeviceSetComputeMode(pynvml.nvmlDeviceGetHandleByUUID(uuid), mode.value)
            except (pynvml.NVMLError_NoPermission, pynvml.NVMLError_NotSupported) as exc:
                raise ComputeModeRefused(f"NVML refused compute mode {mode.name} on {uuid}: {exc}") from exc
            except pynvml.NVMLError as exc:
                raise InventoryError(f"NVML cannot set compute mode {mode.name} on {uuid}: {exc}") from exc

    def utilization(self, uuid: str) -> float | None:
        with _nvml() as pynvml:
            try:
                return pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByUUID(uuid)).gpu / 100
            except pynvml.NVMLError:
                return None


@contextmanager
def _nvml() -> Iterator:
    """NVML initialised for one call (NVML counts nested inits, so this is cheap and safe)."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise InventoryError(f"NVML is not usable on this node: {exc}") from exc
    try:
        yield pynvml
    finally:
        pynvml.nvmlShutdown()


def _alive(pid: int, started: int | None) -> bool:
    """The process a simulated record names still runs, whoever's: its PID runs and started when
    the record says, not a later process given the PID of a client killed without cleaning up."""
    return started is not None and start_ticks(pid) == started


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


MPS_SERVER = "nvidia-cuda-mps-server"  # the name of an MPS server's executable


def _is_mps_server(pynvml, pid: int) -> bool:
    """Whether NVML names the process an MPS server (its name may be a path)."""
    try:
        return Path(_text(pynvml.nvmlSystemGetProcessName(pid))).name == MPS_SERVER
    except pynvml.NVMLError:  # ended since it was listed
        return False


def _sm_count(pynvml, handle) -> int:
    """SM count is exposed as multiprocessorCount in the device attributes (NVML r470+)."""
    try:
        return int(pynvml.nvmlDeviceGetAttributes(handle).multiprocessorCount)
    except pynvml.NVMLError:
        return 0


def inventory_from(source: str) -> GpuInventory:
    """``nvml`` for real GPUs, otherwise the path of a simulated inventory file."""
    return NvmlInventory() if source == "nvml" else SimulatedInventory(source)
