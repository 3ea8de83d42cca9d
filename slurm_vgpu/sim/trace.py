"""Load an Alibaba GPU trace (cluster-trace-gpu-v2023 format) into the policy's vocabulary.

Nodes become GPUs of capacity 1000 (the trace's milli-GPU) plus a NodeState for CPU and memory;
tasks become Requests: ``gpu_milli`` is the share of one GPU, ``num_gpu > 1`` asks for whole GPUs,
``gpu_spec`` (``A|B``) restricts the model, ``qos`` picks the SLO class; ``creation_time``, ``deletion_time`` and ``scheduled_time`` (seconds)
place a task in time for the time mode. Every malformed line is reported with its file, line and
field; none is skipped.
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
# The time mode's columns: when the task was created and deleted, and when it started (empty: it
# never ran in the traced cluster, its owner deleted it while it waited).
TIME_FIELDS = ("creation_time", "deletion_time")
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


@dataclass(frozen=True)
class TimedPod:
    """A task with its times in the traced cluster, in seconds."""

    request: Request
    created: int
    deleted: int
    scheduled: int | None  # None: it never ran there (deleted while it waited)

    @property
    def runtime(self) -> int | None:
        """How long it ran once started; None for a task that never ran, which runs (if started in a
        replay) until its owner deletes it."""
        return None if self.scheduled is None else self.deleted - self.scheduled


def _times(path: Path, line: int, row: dict, problems: list[Problem]) -> tuple[int, int, int | None] | None:
    before = len(problems)
    created, deleted = (_field(path, line, row, f, _count, problems) for f in TIME_FIELDS)
    raw = (row.get("scheduled_time") or "").strip()
    scheduled = _field(path, line, row, "scheduled_time", _count, problems) if raw else None
    if len(problems) > before:
        return None
    if deleted < created:
        problems.append(Problem(str(path), line, "deletion_time", f"{deleted} is before creation_time {created}"))
    elif scheduled is not None and not created <= scheduled <= deleted:
        problems.append(Problem(str(path), line, "scheduled_time",
                                f"{scheduled} is not between creation_time and deletion_time"))
    return None if len(problems) > before else (created, deleted, scheduled)


def load_timed_pods(path: Path) -> tuple[TimedPod, ...]:
    """The tasks with their times, in creation order (the trace's order among equal times)."""
    problems: list[Problem] = []
    pods = []
    for line, row in _rows(path, POD_FIELDS + TIME_FIELDS, problems):
        req = _pod_request(path, line, row, problems)
        times = _times(path, line, row, problems)
        if req is not None and times is not None:
            pods.append(TimedPod(req, *times))
    if problems:
        raise TraceError(problems)
    return tuple(sorted(pods, key=lambda p: p.created))
