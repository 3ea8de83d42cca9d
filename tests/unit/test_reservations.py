"""Slurm's advance reservations as the placement weighs them: a job of no reservation is never
placed on a reserved node (active, or starting before its time limit would end it), a job of a
reservation only on that reservation's nodes, and one whose reservation has not started waits with
that as its reason. Reservations are read as ``scontrol show reservation --oneliner`` prints them
(the line below is 22.05's, as seen on the dev cluster)."""
from __future__ import annotations

import time

from slurm_vgpu.adapters.reservations import closed_nodes, confined_to, not_started, parse
from slurm_vgpu.adapters.slurm import Node
from slurm_vgpu.placement.cycle import unusable_nodes, waiting_on_slurm, waiting_requests

from .test_slurm_jobs import squeue_job


def stamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch))


NOW = 1_800_000_000
SHOWN = (
    f"ReservationName=maint StartTime={stamp(NOW - 60)} EndTime={stamp(NOW + 3540)} Duration=01:00:00 "
    "Nodes=node[1-2] NodeCnt=2 CoreCnt=16 Features=(null) PartitionName=(null) Flags=MAINT,IGNORE_JOBS,SPEC_NODES "
    "TRES=cpu=16 Users=root Groups=(null) Accounts=(null) Licenses=(null) State=ACTIVE BurstBuffer=(null) "
    "Watts=n/a MaxStartDelay=(null)\n"
    f"ReservationName=later StartTime={stamp(NOW + 600)} EndTime={stamp(NOW + 4200)} Duration=01:00:00 "
    "Nodes=node3 NodeCnt=1 CoreCnt=16 Features=(null) PartitionName=(null) Flags=SPEC_NODES TRES=cpu=16 "
    "Users=root Groups=(null) Accounts=(null) Licenses=(null) State=INACTIVE BurstBuffer=(null) Watts=n/a "
    "MaxStartDelay=(null)\n"
)
NODES = {f"node{i}": Node("idle", frozenset({"gpu"})) for i in range(1, 5)}
GPU_NODES = sorted(NODES)


def test_scontrols_reservations_are_read_with_nodes_times_and_flags():
    maint, later = parse(SHOWN)
    assert (maint.name, maint.nodes, maint.flags) == ("maint", {"node1", "node2"}, {"MAINT", "IGNORE_JOBS", "SPEC_NODES"})
    assert (maint.start_s, maint.end_s, maint.active(NOW)) == (NOW - 60, NOW + 3540, True)
    assert (later.nodes, later.active(NOW), later.active(NOW + 600)) == ({"node3"}, False, True)
    assert parse("No reservations in the system\n") == []


def test_a_job_of_no_reservation_keeps_off_reserved_nodes_and_those_reserved_before_it_would_end():
    resv = parse(SHOWN)
    assert closed_nodes(frozenset(), None, resv, NOW) == {"node1", "node2", "node3"}  # unlimited: never fits before
    assert closed_nodes(frozenset(), 9, resv, NOW) == {"node1", "node2"}  # ends before "later" starts
    assert closed_nodes(frozenset(), 11, resv, NOW) == {"node1", "node2", "node3"}
    assert closed_nodes(frozenset(), None, resv, NOW + 4200) == set()  # both over
    assert confined_to(frozenset(), resv, NOW) is None


def test_a_job_of_a_reservation_goes_only_to_its_nodes_and_waits_for_its_start():
    resv = parse(SHOWN)
    assert confined_to(frozenset({"maint"}), resv, NOW) == {"node1", "node2"}
    assert closed_nodes(frozenset({"maint"}), None, resv, NOW) == {"node3"}
    assert not_started(frozenset({"maint"}), resv, NOW) is None
    assert not_started(frozenset({"later"}), resv, NOW) == f"its reservation later starts at {stamp(NOW + 600)}"
    assert "not active" in not_started(frozenset({"gone"}), resv, NOW)
    flex = parse(SHOWN.replace("Flags=MAINT,", "Flags=FLEX,MAINT,"))
    assert confined_to(frozenset({"maint"}), flex, NOW) is None  # FLEX: its nodes and others


def test_waiting_jobs_are_placed_only_where_their_reservations_let_slurm_start_them():
    resv = parse(SHOWN)
    plain = squeue_job(1)
    short = squeue_job(2, time_limit=5)
    member = squeue_job(3, resv_name="maint")
    early = squeue_job(4, resv_name="later")
    requests = {r.job_id: r.nodes for r in waiting_requests([plain, short, member, early], set(), NOW, nodes=NODES,
                                                            gpu_nodes=GPU_NODES, reservations=resv).requests}
    assert requests == {"1": {"node4"}, "2": {"node3", "node4"}, "3": {"node1", "node2"}}
    told = waiting_on_slurm([plain, member, early], set(), NOW, resv)
    assert [(b.job_id, b.reason) for b in told] == [("4", f"its reservation later starts at {stamp(NOW + 600)}")]


def test_a_job_that_reservations_leave_no_gpu_node_is_told_so_not_that_slurm_refused_its_pins():
    resv = parse(SHOWN)
    three = {name: NODES[name] for name in ("node1", "node2", "node3")}  # every GPU node reserved
    unlimited, member = squeue_job(1), squeue_job(2, resv_name="maint")
    requests, shut_out = waiting_requests([unlimited, member], set(), NOW, nodes=three,
                                          gpu_nodes=sorted(three), reservations=resv)
    assert [r.job_id for r in requests] == ["2"]
    assert [(b.job_id, b.reason, b.never) for b in shut_out] == [
        ("1", "every GPU node it may use is in an advance reservation it is not part of, or one that starts "
              "before its time limit ends (scontrol show reservation)", False)]
    off = squeue_job(3, resv_name="maint", partition="other")
    assert waiting_requests([off], set(), NOW, nodes={**NODES, "node9": Node("idle", frozenset({"other"}))},
                            gpu_nodes=GPU_NODES, reservations=resv).shut_out[0].reason.startswith(
        "Slurm would start it on none of the GPU nodes: its partition (other)")
    elsewhere = squeue_job(4, resv_name="maint", excluded_nodes="node[1-2]")
    assert waiting_requests([elsewhere], set(), NOW, nodes=NODES, gpu_nodes=GPU_NODES,
                            reservations=resv).shut_out[0].reason == (
        "its reservation maint holds none of the GPU nodes it may use")


def test_reserved_and_planned_nodes_stay_usable_for_the_jobs_slurm_would_start_there():
    """sinfo's states for a node in a maintenance reservation, in another reservation, and idle
    while the backfill scheduler plans a job on it (seen on 22.05 with a reservation ahead)."""
    nodes = {name: Node(state, frozenset({"gpu"})) for name, state in
             [("n1", "maint"), ("n2", "resv"), ("n3", "plnd"), ("n4", "drain"), ("n5", "mix-")]}
    assert set(unusable_nodes(nodes)) == {"n4"}
