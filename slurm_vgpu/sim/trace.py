"""Load an Alibaba GPU trace (cluster-trace-gpu-v2023 format) into the policy's vocabulary.

Nodes become GPUs of capacity 1000 (the trace's milli-GPU) plus a NodeState for CPU and memory;
tasks become Requests: ``gpu_milli`` is the share of one GPU, ``num_gpu > 1`` asks for whole GPUs,
``gpu_spec`` (``A|B``) restricts the model, ``qos`` picks the SLO class. Every malformed line is
reported with its file, line and field; none is skipped.
"""
from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..policy.model import GpuState, NodeState, Request, SloClass

MILLI = 1000
QOS_CLASSES = {"LS": SloClass.LATENCY, "BE": SloClass.BEST_EFFORT}
NODE_FIELDS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
# The columns every pod list of the dataset has; gpu_spec (any model when absent) and qos
# (throughput) are read where present: the multi-GPU lists have only these five.
POD_FIELDS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
# The default trace, shipped with the package (README.md there says what it is and whom to cite).
DEFAULT_DIR = Path(__file__).resolve().parent / "traces" / "alibaba-gpu-v2023"
DEFAULT_NODES = "openb_node_list_gpu_node.csv"
DEFAULT_PODS = "openb_pod_list_default.csv"


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: field {self.field!r}: {self.message}"


class TraceError(ValueError):
    """Every problem found in a trace file, so that one run shows them all."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class Cluster:
    gpus: tuple[GpuState, ...]
    nodes: tuple[NodeState, ...]

    @property
    def capacity(self) -> int:
        return sum(g.capacity for g in self.gpus)


def _rows(path: Path, required: tuple[str, ...], problems: list[Problem]):
    """(line number, row) for each data line; each missing column is a problem of the file's header."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or ())]
        problems += [Problem(str(path), 1, column, "column missing from the header") for column in missing]
        if missing:
            return
        for row in reader:
            yield reader.line_num, row


def _field(path: Path, line: int, row: dict, name: str, parse: Callable[[str], object],
           problems: list[Problem]):
    raw = row.get(name)
    try:
        if raw is None:
            raise ValueError("line has too few fields")
        return parse(raw.strip())
    except ValueError as err:
        problems.append(Problem(str(path), line, name, f"{raw!r}: {err}"))
        return None


def _count(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def load_nodes(path: Path) -> Cluster:
    problems: list[Problem] = []
    gpus: list[GpuState] = []
    nodes: list[NodeState] = []
    for line, row in _rows(path, NODE_FIELDS, problems):
        name = (row.get("sn") or "").strip()
        if not name:
            problems.append(Problem(str(path), line, "sn", "empty node name"))
        cpu, mem, count = (_field(path, line, row, f, _count, problems)
                           for f in ("cpu_milli", "memory_mib", "gpu"))
        model = (row.get("model") or "").strip()
        if count and not model:
            problems.append(Problem(str(path), line, "model", "a node with GPUs needs a model"))
        if None in (cpu, mem, count) or not name:
            continue
        nodes.append(NodeState(name, cpu, mem))
        gpus.extend(GpuState(uuid=f"{name}/{i}", node=name, index=i, model=model, memory_mib=0,
                             capacity=MILLI) for i in range(count))
    if problems:
        raise TraceError(problems)
    return Cluster(tuple(gpus), tuple(nodes))


def _pod_request(path: Path, line: int, row: dict, problems: list[Problem]) -> Request | None:
    before = len(problems)
    cpu, mem, num, milli = (_field(path, line, row, f, _count, problems)
                            for f in ("cpu_milli", "memory_mib", "num_gpu", "gpu_milli"))
    name = (row.get("name") or "").strip()
    if not name:
        problems.append(Problem(str(path), line, "name", "empty task name"))
    if num is not None and milli is not None:
        if num == 1 and not 0 < milli <= MILLI:
            problems.append(Problem(str(path), line, "gpu_milli",
                                    f"{milli} is not 1..{MILLI} for a one-GPU task"))
        elif num > 1 and milli != MILLI:
            problems.append(Problem(str(path), line, "gpu_milli",
                                    f"{milli}: a {num}-GPU task takes whole GPUs ({MILLI})"))
        elif num == 0 and milli != 0:
            problems.append(Problem(str(path), line, "gpu_milli", f"{milli} on a task with no GPU"))
    if len(problems) > before:
        return None
    spec = (row.get("gpu_spec") or "").strip()
    return Request(
        job_id=name,
        share=milli if num == 1 else (MILLI if num else 0),
        slo_class=QOS_CLASSES.get((row.get("qos") or "").strip(), SloClass.THROUGHPUT),
        models=frozenset(m for m in spec.split("|") if m),
        gpus=num,
        cpu_milli=cpu,
        node_memory_mib=mem,
    )


def load_pods(path: Path) -> tuple[Request, ...]:
    problems: list[Problem] = []
    pods = [req for line, row in _rows(path, POD_FIELDS, problems)
            if (req := _pod_request(path, line, row, problems)) is not None]
    if problems:
        raise TraceError(problems)
    return tuple(pods)
