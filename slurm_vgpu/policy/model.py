"""The placement policy's vocabulary: plain immutable records, no I/O.

The daemon builds these from Postgres and Slurm, the simulator from trace CSVs, the CLI's dry run
from either; all of them hand the same records to :func:`slurm_vgpu.policy.place_slices`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from .. import contract


class SloClass(str, Enum):
    """SLO classes; behaviour is fixed, names are what users type after ``--vgpu-class``."""

    LATENCY = contract.LATENCY
    THROUGHPUT = contract.THROUGHPUT
    BEST_EFFORT = contract.BEST_EFFORT


@dataclass(frozen=True)
class GpuState:
    """One GPU as the policy sees it at the start of a cycle.

    ``capacity`` is in share units: 100 in Slurm (vgpu percent), 1000 in the Alibaba trace (milli).
    ``classes`` has one entry per slice on the GPU, so its length is the number of MPS clients the
    slices hold (one each: a job that opens more contexts is not counted twice); ``max_clients`` is
    the most its MPS server takes (None: no limit, as in trace replays, whose GPUs are not MPS).
    """

    uuid: str
    node: str
    index: int
    model: str  # normalised short model name, e.g. "H100", "A100", "T4"
    memory_mib: int
    speed: float = 1.0  # throughput relative to the reference GPU model
    capacity: int = 100
    used: int = 0
    memory_used_mib: int = 0
    user: int | None = None  # uid owning the GPU's MPS server, None when no slice is on it
    classes: tuple[SloClass, ...] = ()  # SLO class of every slice already on the GPU
    available: bool = True  # False when drained, down, or its node's agent is silent
    unavailable_reason: str | None = None  # why not available, in words (names a silent node)
    capped_users: frozenset[int] = frozenset()  # uids with a slice capped at some memory here
    uncapped_users: frozenset[int] = frozenset()  # uids with a slice without a memory cap here
    max_clients: int | None = None  # the most slices it may hold (its MPS server's limit)
    free: int = field(init=False, repr=False, compare=False)  # capacity - used, read very often
    client_room: bool = field(init=False, repr=False, compare=False)  # one more slice is within max_clients

    def __post_init__(self) -> None:
        object.__setattr__(self, "free", self.capacity - self.used)
        object.__setattr__(self, "client_room", self.max_clients is None or len(self.classes) < self.max_clients)

    def caps_kept(self, user: int, memory_mib: int | None) -> bool:
        """Whether a slice of ``user`` with this memory cap (None: none) leaves every cap here one
        that can be kept. A slice without a cap may use all of the GPU's memory, so it never shares a
        GPU with another user's capped slice; one user's slices share that user's MPS server. The
        capacity guard holds the same rule (migration 0005)."""
        others = self.capped_users if memory_mib is None else self.uncapped_users
        return not others or others <= {user}


@dataclass(frozen=True)
class NodeState:
    """A node's non-GPU resources; ``None`` means the caller does not constrain them."""

    name: str
    cpu_milli_free: int | None = None
    memory_mib_free: int | None = None


@dataclass(frozen=True)
class Request:
    """A pending request. ``share`` is in the capacity units of the GPUs (or reference units).

    ``gpus > 1`` asks for that many whole GPUs on one node (trace replay only: a vgpu slice is
    always ``gpus == 1``); ``whole`` asks for whole GPUs even when ``gpus == 1`` (a job's
    ``--gres=gpu:1``: all of a GPU's units, whatever its speed). ``models`` restricts the GPU model;
    empty means any. ``nodes`` restricts the nodes (Slurm refused the job's pin elsewhere); None
    means any.
    """

    job_id: str
    share: int
    user: int = 0
    slo_class: SloClass = SloClass.THROUGHPUT
    memory_mib: int | None = None
    models: frozenset[str] = frozenset()
    gpus: int = 1
    whole: bool = False
    cpu_milli: int = 0
    node_memory_mib: int = 0
    waited_s: float = 0.0  # time since submission, for anti-starvation
    nodes: frozenset[str] | None = None


@dataclass(frozen=True)
class Decision:
    """Place ``job_id`` on these GPUs of ``node`` with ``share`` units taken on each."""

    job_id: str
    node: str
    gpu_uuids: tuple[str, ...]
    share: int  # units on each GPU, after any reference-unit conversion


@dataclass(frozen=True)
class Blocked:
    """A request left unplaced this cycle; ``never`` means no GPU in the cluster could ever meet it."""

    job_id: str
    reason: str
    never: bool = False


@dataclass(frozen=True)
class PolicyConfig:
    policy: str = "ours"  # random | first-fit | best-fit | fgd | ours
    multi_user: bool = False  # True only where the site runs MPS multi-user mode
    latency_max_cotenants: int = 2  # other slices allowed beside a latency slice
    reference_model: str | None = None  # when set, shares are in units of this model's speed
    starvation_wait_s: float = 600.0  # after this wait a blocked request reserves a GPU (one each, in order)
    seed: int = 0


@dataclass(frozen=True)
class PlacementResult:
    decisions: tuple[Decision, ...] = ()
    blocked: tuple[Blocked, ...] = ()
    reserved: dict[str, str] = field(default_factory=dict)  # gpu uuid -> job id holding it
