"""Dev-cluster layouts: which nodes exist and which simulated GPUs each has."""
from __future__ import annotations

import tomllib
import uuid
from pathlib import Path

from slurm_vgpu.adapters.gpus import GpuRecord
from slurm_vgpu.catalog import MODELS
from slurm_vgpu.render import NodeSpec

DEFAULT_LAYOUT = Path(__file__).with_name("default-layout.toml")


class LayoutError(ValueError):
    pass


def load_layout(path: Path | str = DEFAULT_LAYOUT) -> list[NodeSpec]:
    """Parse a layout TOML: ``[[node]] name = "node1"  gpus = { h100 = 4 }  cpus = 4  memory_mib = 8192
    features = ["ib"]``."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise LayoutError(f"layout file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise LayoutError(f"layout file {path} is not valid TOML: {exc}") from exc
    nodes = []
    for position, entry in enumerate(doc.get("node", []), start=1):
        name = entry.get("name")
        if not name or not str(name).isidentifier():
            raise LayoutError(f"{path}: node #{position} needs a name of letters, digits and _")
        gpus = []
        for model, count in entry.get("gpus", {}).items():
            if model not in MODELS:
                raise LayoutError(
                    f"{path}: node {name}: unknown GPU model {model!r}; known: {', '.join(MODELS)}"
                )
            gpus.extend([model] * int(count))
        nodes.append(
            NodeSpec(
                name=name,
                gpus=tuple(simulated_gpu(name, i, m) for i, m in enumerate(gpus)),
                cpus=int(entry.get("cpus", 4)),
                memory_mib=int(entry.get("memory_mib", 8192)),
                features=tuple(str(f) for f in entry.get("features", ())),
            )
        )
    if not nodes:
        raise LayoutError(f"{path}: no [[node]] entries")
    return nodes


def simulated_gpu(node: str, index: int, model: str) -> GpuRecord:
    """A simulated GPU with a UUID that is stable for the same node and index. Its device minor
    differs from its index, as it may on a real node, so a mix-up of the two fails a test."""
    spec = MODELS[model]
    gpu_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"slurm-vgpu-sim://{node}/{index}")
    return GpuRecord(
        index=index,
        uuid=f"GPU-{gpu_uuid}",
        name=spec.name,
        model=model,
        sm_count=spec.sm_count,
        memory_mib=spec.memory_mib,
        compute_capability=spec.compute_capability,
        minor=2 * index + 1,
    )
