"""A node as the scoring functions see it, and the key under which its evaluation can be reused.

The daemon and the CLI build views from a cycle's GPU list; the simulator keeps views across pods and
memoises evaluations by :func:`node_shape`, so two nodes in the same state are scored once.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .model import GpuState, NodeState


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node: its GPUs in index order and, when known, its free CPU and memory."""

    name: str
    gpus: tuple[GpuState, ...]
    cpu_milli_free: int | None = None
    memory_mib_free: int | None = None
    # What fragmentation reads of the node: free CPU and the sorted (free, capacity, model, speed)
    # of its available GPUs. Computed once here because every score of the node reads it.
    key: tuple = field(init=False, repr=False, compare=False)
    gpu_free: int = field(init=False, repr=False, compare=False)  # free units of its available GPUs
    in_use: bool = field(init=False, repr=False, compare=False)  # some GPU holds a slice
    most_free: int = field(init=False, repr=False, compare=False)  # free units of its freest available GPU (-1: none)
    whole_free: int = field(init=False, repr=False, compare=False)  # available GPUs with nothing on them

    def __post_init__(self) -> None:
        entries = sorted((g.free, g.capacity, g.model, g.speed) for g in self.gpus if g.available)
        object.__setattr__(self, "key", (self.cpu_milli_free, tuple(entries)))
        object.__setattr__(self, "gpu_free", sum(e[0] for e in entries))
        object.__setattr__(self, "in_use", any(g.used for g in self.gpus))
        object.__setattr__(self, "most_free", entries[-1][0] if entries else -1)
        object.__setattr__(self, "whole_free", sum(1 for free, capacity, *_ in entries if free == capacity))


def node_shape(node: NodeView) -> tuple:
    """Everything a node evaluation reads, without names: equal shapes get equal evaluations."""
    return (
        node.cpu_milli_free,
        node.memory_mib_free,
        tuple(
            (g.free, g.capacity, g.model, g.memory_mib - g.memory_used_mib, g.user, g.classes,
             g.available, g.speed, g.capped_users, g.uncapped_users, g.max_clients)
            for g in node.gpus
        ),
    )


def group_nodes(gpus: Iterable[GpuState], nodes: Sequence[NodeState] = ()) -> list[NodeView]:
    """Group a flat GPU list into node views, nodes in order of first appearance, GPUs by index."""
    by_node: dict[str, list[GpuState]] = {}
    for gpu in gpus:
        by_node.setdefault(gpu.node, []).append(gpu)
    resources = {n.name: n for n in nodes}
    views = []
    for name, members in by_node.items():
        res = resources.get(name)
        views.append(NodeView(
            name=name,
            gpus=tuple(sorted(members, key=lambda g: g.index)),
            cpu_milli_free=res.cpu_milli_free if res else None,
            memory_mib_free=res.memory_mib_free if res else None,
        ))
    for res in nodes:  # GPU-less nodes still host CPU-only trace tasks
        if res.name not in by_node:
            views.append(NodeView(res.name, (), res.cpu_milli_free, res.memory_mib_free))
    return views
