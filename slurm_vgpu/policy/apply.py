"""What a node looks like once a request is placed on some of its GPUs."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from .rules import Ask
from .view import NodeView


def place_on(node: NodeView, positions: Sequence[int], ask: Ask) -> NodeView:
    """A new view with the request's share, memory (its user among the capped or the uncapped), user
    and class added to ``positions`` and its CPU and memory taken from the node."""
    req = ask.request
    gpus = list(node.gpus)
    for i in positions:
        g = gpus[i]
        capped = req.memory_mib is not None
        gpus[i] = replace(
            g,
            used=g.used + ask.units(g),
            memory_used_mib=g.memory_used_mib + (req.memory_mib or 0),
            user=req.user if g.user is None else g.user,
            classes=g.classes + (req.slo_class,),
            capped_users=g.capped_users | {req.user} if capped else g.capped_users,
            uncapped_users=g.uncapped_users if capped else g.uncapped_users | {req.user},
        )
    return NodeView(
        node.name,
        tuple(gpus),
        None if node.cpu_milli_free is None else node.cpu_milli_free - req.cpu_milli,
        None if node.memory_mib_free is None else node.memory_mib_free - req.node_memory_mib,
    )
