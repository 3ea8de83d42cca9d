"""GPU inventory: NVML on a real node, an inventory file on a simulated one; same records either way."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from ..catalog import short_name


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


@dataclass(frozen=True)
class GpuProcess:
    """A compute process on one GPU: its memory and, when sampled, its share of the GPU's SMs."""

    pid: int
    used_mib: int
    sm_util: float | None = None  # 0..1 of the whole GPU; None when NVML has no sample for it


class GpuInventory(Protocol):
    def gpus(self) -> list[GpuRecord]:
        """The node's healthy GPUs; a GPU NVML reports lost (or the file marks lost) is left out."""
        ...

    def processes(self, uuid: str) -> list[GpuProcess]: ...

    def utilization(self, uuid: str) -> float | None:
        """The GPU's busy ratio (0..1) over NVML's last sample period; None when unknown."""
        ...


class InventoryError(RuntimeError):
    pass


class SimulatedInventory:
    """Reads a JSON inventory file: ``{"node": "...", "gpus": [GpuRecord fields..., "lost": true?]}``.

    Processes are what fake CUDA clients (``python -m slurm_vgpu_dev.fake_cuda``) report: one JSON
    file per process, ``<usage dir>/<gpu uuid>/<pid>`` = ``{"used_mib": N, "sm_util": 0..1}``, where
    the usage directory sits beside the inventory file (``node1.json`` -> ``node1.usage``).
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)

    @property
    def usage_dir(self) -> Path:
        return self.path.with_suffix(".usage")

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
        """Live reporting clients; a file left by a client that died without cleaning up is ignored."""
        found = []
        for path in sorted((self.usage_dir / uuid).glob("[0-9]*")):
            try:
                doc = json.loads(path.read_text())
                os.kill(int(path.name), 0)
            except (OSError, ValueError):
                continue
            found.append(GpuProcess(int(path.name), int(doc["used_mib"]), float(doc.get("sm_util", 0.0))))
        return found

    def utilization(self, uuid: str) -> float | None:
        return min(1.0, sum(p.sm_util or 0.0 for p in self.processes(uuid)))


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
