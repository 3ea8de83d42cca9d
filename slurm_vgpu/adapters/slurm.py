"""Slurm, through its command-line tools (``squeue --json``, ``scontrol``, ``scancel``).

The CLI with ``--json`` works on every Slurm from 22.05 to 25.11; pyslurm on PyPI needs 25.11+.
Everything slurm-vgpu asks of Slurm goes through this module.
"""
from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from .. import hostlist
from .features import ConstraintError, satisfies
from .reservations import Reservation, names as reservation_names, not_started, parse as parse_reservations
from ..contract import HOLD_DAYS, SHARE_MAX, UNPLACED, VgpuRequest, parse_request, quote

# States of a job that will not run again (unless requeued by someone).
ENDED_STATES = frozenset({"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
                          "BOOT_FAIL", "DEADLINE"})


class SlurmError(RuntimeError):
    pass


@dataclass(frozen=True)
class Node:
    """A node as ``sinfo`` shows it: compact state (``idle``, ``mix``, ``drain``, ``down*``...), the
    partitions it belongs to, its idle CPUs and its memory not allocated to jobs (None: unknown),
    and its features."""

    state: str
    partitions: frozenset[str]
    cpus_idle: int | None = None
    memory_free_mib: int | None = None
    features: frozenset[str] = frozenset()  # its available features (slurm.conf Features=)


def drained(state: str) -> bool:
    """Whether ``sinfo``'s compact state says drained or still draining (``drain``, ``drng``),
    whatever flag it carries (``drain*`` not responding, ``drain~`` powered off...)."""
    return state.rstrip("*~#!%$@^-") in ("drain", "drng")


@dataclass(frozen=True)
class Job:
    job_id: int
    user_id: int
    user_name: str
    state: str  # PENDING, RUNNING, COMPLETED, ...
    priority: int
    submit_time: int
    nodes: str
    tres_per_node: str
    request: VgpuRequest | None
    dependency: str = ""  # Slurm's own: "" once met (or none), "afterok:7(unfulfilled)" while not
    reason: str = ""  # Slurm's state_reason: BeginTime, Dependency, JobHeldUser, ...
    partition: str = ""  # the partitions it may run in, comma-separated
    excluded_nodes: str = ""  # --exclude, a hostlist
    features: str = ""  # --constraint, as Slurm keeps it
    # Job arrays (docs/slurm-behaviour.md): every task that Slurm has split off into its own record
    # (by an update of that task, or by starting it) has its own job_id and array_task_id; the
    # array's other pending tasks share one record, whose job_id is the array's and whose
    # ``array_tasks`` lists them (``1-4``, ``1,3-4``); that record turns into the last task itself.
    array_job_id: int = 0  # 0: not part of an array
    array_task_id: int | None = None
    array_tasks: str = ""  # the pending tasks not yet split off, without the ``%N`` throttle
    array_max_tasks: int = 0  # the ``%N`` throttle: at most N tasks run at once (0: none)
    # 26.05+: the job's SLUID, which also names its cgroup directory unless CgroupJobIdPaths=yes
    sluid: str = ""
    restarts: int = 0  # times Slurm requeued it; a requeue also sets submit_time to its own time
    cpus: int = 1  # the CPUs it asks for (-n x -c), all on its one node
    memory_mib: int | None = None  # --mem, or --mem-per-cpu x cpus; None: not asked for
    reservation: str = ""  # --reservation, as Slurm keeps it (``a,b``: one of them)
    time_limit_min: int | None = None  # its time limit in minutes; None: unlimited
    requeue: bool = True  # Slurm may requeue it (False: submitted with --no-requeue, or JobRequeue=0)

    @property
    def ref(self) -> int | str:
        """How Slurm's commands name this job alone: ``<array>_<task>`` for an array task, since
        ``JobId=<array id>`` names every task of the array (the record that turned into the last
        task keeps the array's id), else the job id."""
        return self.job_id if self.array_task_id is None else f"{self.array_job_id}_{self.array_task_id}"

    @property
    def holds_array_tasks(self) -> bool:
        """Whether this record stands for several pending tasks of an array (never placed as such:
        each task is split off and placed as its own job)."""
        return "," in self.array_tasks or "-" in self.array_tasks

    def pending_tasks(self) -> list[int]:
        """The task ids of ``array_tasks``: ``1-3,7,10-14:2`` -> 1, 2, 3, 7, 10, 12, 14."""
        return array_task_ids(self.array_tasks)

    def allowed_nodes(self, nodes: Mapping[str, Node]) -> frozenset[str]:
        """The nodes Slurm would run it on, by its partitions, --constraint, --exclude and
        --nodelist (the placement sets NodeList itself, so the user's own is kept in the
        AdminComment). A constraint this reading cannot follow narrows nothing: Slurm took it at
        submit, and would refuse a pin where it does not hold (the node is then left out a while)."""
        partitions = set(filter(None, self.partition.split(",")))
        allowed = {name for name, node in nodes.items() if node.partitions & partitions} if partitions else set(nodes)
        if self.features:
            try:
                allowed = {name for name in allowed if satisfies(self.features, nodes[name].features)}
            except ConstraintError:
                pass
        if self.excluded_nodes:
            allowed -= set(hostlist.expand(self.excluded_nodes))
        if self.request is not None and self.request.nodelist:
            allowed &= set(hostlist.expand(self.request.nodelist))
        return frozenset(allowed)

    @property
    def held_by_limit(self) -> bool:
        """Whether Slurm holds this pending job back for a limit of its QoS or association
        (``QOSMaxGRESPerUser``, ``AssocGrpGRES``, ...: each such reason starts so). A vgpu job
        carries its units only once pinned, so Slurm holds it so only then; it starts on its pin
        once the limit allows."""
        return self.state == "PENDING" and self.reason.startswith(("QOS", "Assoc"))

    def waits_on_slurm(self, now_s: float, reservations: Sequence[Reservation] = ()) -> str | None:
        """Why Slurm itself would not start this pending job yet, whatever its GPU: what
        :meth:`kept_back` says, or the delay Slurm puts on a requeued job. None when only its
        placement is missing. Such a job is not placed: a pin would hold a GPU that no job uses
        (and starve others' requests)."""
        if self.restarts and now_s < self.submit_time + REQUEUE_DELAY_S:
            again = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.submit_time + REQUEUE_DELAY_S))
            delay = (f"requeued; Slurm starts a requeued job again {REQUEUE_DELAY_S} s after its requeue "
                     f"at the earliest ({again})")
        else:
            delay = None
        return self.kept_back(now_s, reservations) or delay

    def kept_back(self, now_s: float, reservations: Sequence[Reservation] = ()) -> str | None:
        """Why Slurm keeps it pending until someone or something acts: a user or admin hold
        (priority 0), a dependency not met, the user's own --begin still ahead, its reservation
        not started (of ``reservations``, Slurm's; none given: not weighed). Its user is told
        so; not of a requeue's delay, which passes by itself while the reason it was requeued for
        (an MPS fault, a lost GPU) stays in its AdminComment."""
        if self.priority == 0:
            return f"held ({self.reason or 'priority 0'}); release it with scontrol release {self.job_id}"
        if self.dependency:
            return f"waits for its dependency {self.dependency}"
        if self.request is not None and self.request.begin is not None and self.request.begin > now_s:
            return f"waits for its --begin time ({time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(self.request.begin))})"
        return not_started(reservation_names(self.reservation), reservations, now_s)


# Slurm delays a requeued job by its credentials' lifetime plus one second (AuthInfo cred_expire,
# 120 s by default): seen as EligibleTime = requeue + 121 s. A pin sets StartTime=now, which undid
# the delay: relaunched 12 s after its failed prolog on the same node, a job ran without any prolog
# (slurmd: "reissued job credential"), so with no slice, and its task was refused.
REQUEUE_DELAY_S = 121


class JobHold(NamedTuple):
    held: bool  # pending with priority 0: a user's, an admin's or Slurm's own hold
    restarts: int  # times Slurm requeued it


class Slurm:
    """Talks to one cluster; ``slurm_conf`` selects it (dev clusters), else Slurm's default."""

    def __init__(self, slurm_conf: Path | str | None = None, timeout: float = 30.0):
        self.env = {**os.environ, **({"SLURM_CONF": str(slurm_conf)} if slurm_conf else {})}
        self.timeout = timeout

    def _run(self, *argv: str, env: dict[str, str] | None = None) -> str:
        try:
            result = subprocess.run(argv, env={**self.env, **(env or {})}, capture_output=True, text=True,
                                    timeout=self.timeout)
        except subprocess.TimeoutExpired as exc:
            raise SlurmError(f"{' '.join(argv)} timed out after {self.timeout:.0f}s") from exc
        if result.returncode != 0:
            raise SlurmError(f"{' '.join(argv)} failed: {result.stderr.strip() or result.stdout.strip()}")
        return result.stdout

    def jobs(self) -> list[Job]:
        """Every job slurmctld still knows (pending, running, and recently ended)."""
        # 22.05 returns every job with --json whatever the filters; 23.02+ applies the default state
        # filter (pending and running only) unless told --states=all
        doc = json.loads(self._run("squeue", "--json", "--all", "--states=all"))
        return [_job(j) for j in doc.get("jobs", [])]

    def vgpu_jobs(self) -> list[Job]:
        return [j for j in self.jobs() if j.request is not None]

    def same_job(self, job: Job) -> None:
        """Raise SlurmError unless ``job``'s id still names that job (same submit time) in
        slurmctld. Every update below writes the job's whole AdminComment, where its request lives:
        a slurmctld back from older state gives a forgotten job's id to the next submission, and an
        update meant for the first, read a moment before, would give the second the first's
        request (seen in a chaos run: a 30% job pinned and run at the 40% of the job it replaced)."""
        out = self._run("squeue", "--noheader", f"--jobs={job.ref}", "--states=all", "--format=%V",
                        env={"SLURM_TIME_FORMAT": "%s"}).split()
        if out[:1] != [str(job.submit_time)]:
            raise SlurmError(f"job {job.ref} is not the job read a moment ago (submitted at {job.submit_time}, "
                             f"now {out[0] if out else 'unknown'}): slurmctld gave its id to another job, or requeued it")

    def _update(self, job: Job, *fields: str) -> None:
        """One ``scontrol update`` of this job, once :meth:`same_job` holds."""
        self.same_job(job)
        self._run("scontrol", "update", f"JobId={job.ref}", *fields)

    def pin(self, job: Job, gres_types: Sequence[str], share: int, node: str, request: VgpuRequest) -> None:
        """Give a waiting job its typed per-GPU GRES (its slice's vgpu units on its one GPU, or each
        whole GPU as gres/gpu, whose device file Slurm then opens to it), its node and
        StartTime=now, in one update."""
        if request.gpus:
            gres = ",".join(f"gpu:{gres_type}:1" for gres_type in gres_types)
        else:
            (gres_type,) = gres_types
            gres = f"vgpu:{gres_type}:{share}"
        self._update(job, f"Gres={gres}", f"NodeList={node}", "StartTime=now", f"AdminComment={request.comment()}")

    def hold(self, job: Job, request: VgpuRequest) -> None:
        """Put a pinned-but-not-started job back to unplaced: no vgpu GRES, no node, its begin
        time pushed ahead again (one update)."""
        self._update(job, *_unplaced(request))

    def split_task(self, array_job_id: int, task_id: int, request: VgpuRequest) -> None:
        """Split one pending task of an array off into its own job record (a new job id, the array's
        submit time, still waiting unplaced), so that it is placed and pinned on its own: an update
        of ``JobId=<array>_<task>`` touches only that task."""
        self._run("scontrol", "update", f"JobId={array_job_id}_{task_id}", f"AdminComment={request.comment()}")

    def set_comment(self, job: Job, request: VgpuRequest) -> None:
        self._update(job, f"AdminComment={request.comment()}")

    def cancel(self, job: Job, request: VgpuRequest) -> None:
        """End a job that can never run; its admin_comment says why (``scontrol show job``)."""
        self.set_comment(job, request)
        self._run("scancel", str(job.ref))

    def requeue(self, job: Job, request: VgpuRequest) -> None:
        """Requeue a running job unplaced; the placement will find it a new GPU. Held across the
        update so it cannot start again on the old pin, then released to its begin-time hold."""
        self.same_job(job)
        self._run("scontrol", "requeuehold", str(job.ref))
        # the requeue gave it a new submit time: the hold and release are of the job just requeued
        self._run("scontrol", "update", f"JobId={job.ref}", *_unplaced(request))
        self._run("scontrol", "release", str(job.ref))

    def send_back(self, job: Job, fallback: VgpuRequest, why: str) -> bool:
        """Hand a vgpu job back to the placement, held and unplaced, its AdminComment saying
        ``wait="requeued: <why>"``: a running job is requeued, a pinned one still pending is held
        again, an ended one needs nothing (returns False). ``fallback`` stands in for a job whose
        AdminComment lost its vgpu fields."""
        if job.state not in ("PENDING", "RUNNING", "CONFIGURING", "SUSPENDED"):
            return False
        request = replace(job.request or fallback, state=UNPLACED, gpu=None, wait=f"requeued: {why}")
        (self.hold if job.state == "PENDING" else self.requeue)(job, request)
        return True

    def signal(self, job: Job, name: str) -> None:
        """Send signal ``name`` (``TERM``) to every process of the job: its batch script and each step."""
        self.same_job(job)
        self._run("scancel", "--full", f"--signal={name}", str(job.ref))

    def preempt_mode(self) -> str:
        """slurm.conf's PreemptMode as slurmctld runs it (``OFF``, ``REQUEUE``, ``SUSPEND,GANG``, ...)."""
        for line in self._run("scontrol", "show", "config").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "PreemptMode":
                return value.strip()
        return "OFF"

    def _show(self, job_id: int) -> dict[str, str] | None:
        """The ``scontrol show job -o`` record of this job id itself; None when Slurm says it no
        longer knows it (SlurmError when Slurm does not answer). Asked for an array's id, Slurm
        prints every task of the array, each under its own JobId: the task whose id this is (an
        array's last task keeps the array's id) is picked."""
        try:
            out = self._run("scontrol", "show", "job", "-o", str(job_id))
        except SlurmError as exc:
            if "Invalid job id" in str(exc):
                return None
            raise
        for line in out.splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            if fields.get("JobId") == str(job_id):
                return fields
        return None

    def job_hold(self, job_id: int) -> JobHold | None:
        """Whether the job waits held (priority 0), and how often Slurm has requeued it, from one
        ``scontrol show job``; None when Slurm no longer knows it or it has ended; SlurmError when
        slurmctld does not answer (a restart), which is neither."""
        fields = self._show(job_id)
        if fields is None or fields.get("JobState") in ENDED_STATES:
            return None
        return JobHold(fields.get("JobState") == "PENDING" and fields.get("Priority") == "0", int(fields["Restarts"]))

    def release(self, job_id: int) -> None:
        """Release this job only: an array task by ``<array>_<task>``, since the array's id names
        every task of it."""
        fields = self._show(job_id) or {}
        task, array = fields.get("ArrayTaskId", ""), fields.get("ArrayJobId", "")
        self._run("scontrol", "release", f"{array}_{task}" if task.isdigit() and array.isdigit() else str(job_id))

    def node_reason(self, node: str) -> tuple[str, str]:
        """(state, reason) of one node as ``sinfo`` prints them (``drain``, ``Prolog error``)."""
        out = self._run("sinfo", "--noheader", "--Node", f"--nodes={node}", "--format=%t|%E").splitlines()
        state, _, reason = (out[0] if out else "|").partition("|")
        return state.strip(), reason.strip()

    def allocated_on(self, node: str) -> dict[int, int]:
        """Job id -> submit time (epoch seconds) of the jobs Slurm has running, starting, ending or
        suspended on ``node``."""
        out = self._run("squeue", "--noheader", f"--nodelist={node}", "--states=RUNNING,CONFIGURING,COMPLETING,"
                        "SUSPENDED", "--format=%A|%V", env={"SLURM_TIME_FORMAT": "%s"})
        return {int(job): int(submitted) for job, submitted in (line.split("|") for line in out.split()) if submitted.isdigit()}

    def resume(self, node: str) -> None:
        self._run("scontrol", "update", f"NodeName={node}", "State=RESUME")

    def nodes(self) -> dict[str, Node]:
        """Every node with its state and partitions (``sinfo`` prints a node once per partition;
        ``*`` marks the default partition)."""
        states: dict[str, str] = {}
        partitions: dict[str, set[str]] = {}
        room: dict[str, tuple[int | None, int | None]] = {}
        features: dict[str, frozenset[str]] = {}
        for line in self._run("sinfo", "--noheader", "--Node", f"--Format={NODE_FIELDS}").splitlines():
            if line.strip():
                name, state, partition, cpus, memory, allocated, listed = (f.strip() for f in line.split("|")[:7])
                states[name] = state
                partitions.setdefault(name, set()).add(partition.rstrip("*"))
                room[name] = node_room(cpus, memory, allocated)
                features[name] = frozenset(f for f in listed.split(",") if f and f != "(null)")
        return {name: Node(states[name], frozenset(partitions[name]), *room[name], features[name]) for name in states}

    def reservations(self) -> list[Reservation]:
        """Every advance reservation slurmctld holds, active or to come."""
        return parse_reservations(self._run("scontrol", "show", "reservation", "--oneliner"))

    def submit(self, *options: str, command: str) -> int:
        """``sbatch --wrap`` a command with these options; the new job's id."""
        return int(self._run("sbatch", "--parsable", *options, "--wrap", command).strip().split(";", 1)[0])

    def states(self, job_ids: Sequence[int]) -> dict[int, str]:
        """The state of each of these jobs that slurmctld still knows (none: an empty dict)."""
        return {job_id: job.state for job_id, job in self.jobs_by_id(job_ids).items()}

    def jobs_by_id(self, job_ids: Sequence[int]) -> dict[int, Job]:
        """Each of these jobs that slurmctld still knows, by id (none: an empty dict)."""
        wanted = set(job_ids)
        try:
            doc = json.loads(self._run("squeue", "--json", "--states=all", f"--jobs={','.join(map(str, job_ids))}"))
        except SlurmError as exc:
            if "Invalid job id" in str(exc):
                return {}
            raise
        return {j["job_id"]: _job(j) for j in doc.get("jobs", []) if j["job_id"] in wanted}

    def node_addresses(self) -> dict[str, str]:
        """Each node's NodeAddr: where a service on it is reached."""
        rows = self._run("sinfo", "--noheader", "--Node", "--Format=NodeList:100|,NodeAddr:100|").splitlines()
        return {name.strip(): address.strip() for name, address, *_ in (r.split("|") for r in rows if r.strip())}

    def scancel(self, job_ids: Sequence[int]) -> None:
        self._run("scancel", *map(str, job_ids))

    def annotate(self, job: Job, note: str) -> None:
        """Tell a running vgpu job's user what the node agent did to it: ``agent="<note>"`` after
        its vgpu fields in AdminComment (``scontrol show job``)."""
        comment = (job.request.comment() + " " if job.request else "") + f"agent={quote(note)}"
        self._run("scontrol", "update", f"JobId={job.ref}", f"AdminComment={comment}")


def array_task_ids(text: str) -> list[int]:
    """Task ids of an array's task string (``1-3,7,10-14:2``, a ``%N`` throttle ignored)."""
    ids: list[int] = []
    for item in filter(None, text.split("%", 1)[0].split(",")):
        bounds, _, step = item.partition(":")
        first, _, last = bounds.partition("-")
        ids += range(int(first), int(last or first) + 1, int(step or 1))
    return ids


# sinfo --Format: every field wide enough, each ended by "|" (a node per line and partition)
NODE_FIELDS = ("NodeList:100|,StateCompact:30|,Partition:100|,CPUsState:40|,Memory:20|,AllocMem:20|,"
               "Features:400|")


def node_room(cpus_state: str, memory: str, allocated: str) -> tuple[int | None, int | None]:
    """(idle CPUs, memory not allocated in MiB) from sinfo's ``A/I/O/T`` CPUs, RealMemory and
    AllocMem; None where sinfo gives no number. Where memory is no consumable resource
    (``CR_Core``), AllocMem stays 0 and all of RealMemory counts as free, as Slurm counts it."""
    parts = cpus_state.split("/")
    idle = int(parts[1]) if len(parts) == 4 and parts[1].isdigit() else None
    free = int(memory) - int(allocated) if memory.isdigit() and allocated.isdigit() else None
    return idle, free


def number(value, default: int | None = 0) -> int | None:
    """A number of ``squeue --json``: plain on 22.05, ``{"set": true, "infinite": false, "number": N}``
    from 23.02 on (unset, or absent: ``default``)."""
    if isinstance(value, dict):
        value = value.get("number") if value.get("set", True) else None
    return default if value is None else int(value)


# State flags that 22.05's job_state_string() names instead of the base state, in its order: a job
# ending shows COMPLETING (its epilog still runs) until every node has finished with it.
_FLAG_STATES = ("COMPLETING", "STAGE_OUT", "CONFIGURING", "RESIZING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                "SPECIAL_EXIT", "STOPPED", "REVOKED", "RESV_DEL_HOLD", "SIGNALING")


def job_state(value) -> str:
    """A job's state as 22.05 names it, from 22.05's ``"COMPLETING"`` or 23.02+'s list of the base
    state and its flags (``["COMPLETED", "COMPLETING"]``, ``["PENDING", "REQUEUED"]``)."""
    if isinstance(value, list):
        flags = [str(v) for v in value]
        return next((f for f in _FLAG_STATES if f in flags[1:]), flags[0] if flags else "")
    return str(value or "")


def tres_per_node(value: str | None) -> str:
    """``gres:vgpu:h100_0:30`` on every release: 23.11+ write TRES as ``gres/vgpu:h100_0:30``."""
    return ",".join(item.replace("gres/", "gres:", 1) if item.startswith("gres/") else item
                    for item in (value or "").split(",")) if value else ""


def _unplaced(request: VgpuRequest) -> tuple[str, ...]:
    """An update's fields that make a job unplaced: no vgpu GRES, no node, its begin time ahead."""
    return ("Gres=", "NodeList=", f"StartTime=now+{HOLD_DAYS}days", f"AdminComment={request.comment()}")


def pinned_gres(tres_per_node: str) -> list[tuple[str, int]]:
    """(gres type, share) of each GPU a pinned job holds: a slice's ``gres:vgpu:h100_0:30``
    (``gres/vgpu:...`` from 23.11); each whole GPU's ``gres:gpu:h100_0:1``, all of its units."""
    pinned = []
    for item in tres_per_node.split(","):
        parts = item.replace("gres/", "gres:", 1).split(":")
        if len(parts) == 4 and parts[:2] == ["gres", "vgpu"] and parts[3].isdigit():
            pinned.append((parts[2], int(parts[3])))
        elif len(parts) == 4 and parts[:2] == ["gres", "gpu"] and parts[3] == "1":
            pinned.append((parts[2], SHARE_MAX))
    return pinned


def _job(doc: dict) -> Job:
    tasks = (doc.get("array_task_string") or "").split("%", 1)[0]
    task_id = number(doc.get("array_task_id"), None)
    if task_id is None and tasks.isdigit():
        # 26.05: the array's record, down to its last pending task, names that task only here
        # (22.05 gives it as array_task_id); pinned as JobId=<array>, it was refused "Job resizing
        # not supported for job arrays"
        task_id, tasks = int(tasks), ""
    return Job(
        job_id=int(doc["job_id"]),
        user_id=int(doc.get("user_id", 0)),
        user_name=doc.get("user_name", ""),
        state=job_state(doc.get("job_state")),
        priority=number(doc.get("priority", 0)),
        submit_time=number(doc.get("submit_time", 0)),
        nodes=doc.get("nodes", "") or "",
        tres_per_node=tres_per_node(doc.get("tres_per_node")),
        request=parse_request(doc.get("admin_comment")),
        dependency=doc.get("dependency") or "",
        reason=str(doc.get("state_reason") or ""),
        partition=doc.get("partition") or "",
        excluded_nodes=doc.get("excluded_nodes") or "",
        features=doc.get("features") or "",
        array_job_id=number(doc.get("array_job_id")),
        array_task_id=task_id,
        array_tasks=tasks,
        array_max_tasks=number(doc.get("array_max_tasks")),
        sluid=str(doc.get("sluid") or (doc.get("step_id") or {}).get("sluid") or ""),
        restarts=number(doc.get("restart_cnt")),
        cpus=number(doc.get("cpus"), 1) or 1,
        memory_mib=_memory_mib(doc),
        reservation=doc.get("resv_name") or "",
        time_limit_min=number(doc.get("time_limit"), None),
        requeue=bool(doc.get("requeue", True)),
    )


def _memory_mib(doc: dict) -> int | None:
    """The memory a job asks for on its node: ``--mem``, or ``--mem-per-cpu`` times its CPUs."""
    per_node = number(doc.get("memory_per_node"), None)
    if per_node:
        return per_node
    per_cpu = number(doc.get("memory_per_cpu"), None)
    return per_cpu * (number(doc.get("cpus"), 1) or 1) if per_cpu else None


# --- This node's Slurm installation, read from files and binaries (works while slurmctld is down). ---

DEFAULT_SLURM_CONF = Path("/etc/slurm/slurm.conf")


def slurm_conf_path(configured: Path | str | None = None) -> Path:
    """SlurmConf= from slurm-vgpu.conf, else SLURM_CONF, else Slurm's default."""
    return Path(configured or os.environ.get("SLURM_CONF") or DEFAULT_SLURM_CONF)


def read_slurm_conf(path: Path) -> dict[str, str]:
    """Top-level ``Key=Value`` settings of slurm.conf and the files it Includes, keys lower-cased.

    Only the first ``Key=Value`` of a line is kept: enough for Prolog=, PlugStackConfig= and the like,
    not for NodeName lines.
    """
    settings: dict[str, str] = {}
    for line in _conf_lines(path):
        words = line.split()
        if words[0].lower() == "include" and len(words) > 1:
            for included in _glob_relative(path, words[1]):
                settings.update(read_slurm_conf(included))
            continue
        key, sep, value = words[0].partition("=")
        if sep:
            settings[key.lower()] = value
    return settings


@dataclass(frozen=True)
class PlugstackEntry:
    kind: str  # required | optional
    plugin: str
    args: str
    source: Path


def plugstack_entries(path: Path) -> list[PlugstackEntry]:
    """The SPANK plugins plugstack.conf loads, following its ``include`` globs."""
    entries = []
    for line in _conf_lines(path):
        words = line.split()
        if words[0] == "include" and len(words) > 1:
            for included in _glob_relative(path, words[1]):
                entries += plugstack_entries(included)
        elif words[0] in ("required", "optional") and len(words) > 1:
            entries.append(PlugstackEntry(words[0], words[1], " ".join(words[2:]), path))
    return entries


def slurmd_version() -> str | None:
    """``22.05.8`` from ``slurmd -V``; None when slurmd is not installed here."""
    try:
        out = subprocess.run(["slurmd", "-V"], capture_output=True, text=True, timeout=10).stdout
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"(\d+\.\d+\.\d+)", out)
    return match.group(1) if match else None


def _conf_lines(path: Path) -> list[str]:
    """Non-empty lines without comments; FileNotFoundError propagates for the caller to report."""
    lines = (raw.split("#", 1)[0].strip() for raw in path.read_text().splitlines())
    return [line for line in lines if line]


def _glob_relative(base: Path, pattern: str) -> list[Path]:
    full = Path(pattern) if Path(pattern).is_absolute() else base.parent / pattern
    return sorted(Path(p) for p in glob.glob(str(full)))
