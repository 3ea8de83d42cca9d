"""How the placement reads Slurm's jobs and nodes: which waiting jobs it places, in what order, on
which nodes, and what it takes from a pinned job's GRES. Jobs are built as ``squeue --json`` (22.05)
shows them."""
from __future__ import annotations

import time
from dataclasses import replace

import pytest

from slurm_vgpu.adapters.slurm import Node, Slurm, SlurmError, _job, array_task_ids, node_room, parse_request
from slurm_vgpu.adapters.slurm import pinned_gres
from slurm_vgpu.placement.cycle import (array_splits, node_states, pins, unusable_nodes, waiting_on_slurm,
                                       waiting_requests)
from slurm_vgpu.policy import GpuState, NodeState, PolicyConfig, place_slices

NOW = 1_800_000_000
NODES = {"a1": Node("idle", frozenset({"gpu"})), "a2": Node("mix", frozenset({"gpu", "debug"})),
         "b1": Node("drain", frozenset({"debug"})), "b2": Node("down*", frozenset({"gpu"}))}


def squeue_job(job_id: int, comment: str = "vgpu-state=unplaced share=30 class=throughput", **fields) -> dict:
    doc = {"job_id": job_id, "user_id": 1000, "user_name": "u", "job_state": "PENDING", "priority": 100,
           "submit_time": NOW - 60, "nodes": "", "tres_per_node": "", "admin_comment": comment,
           "dependency": "", "state_reason": "BeginTime", "partition": "gpu", "excluded_nodes": ""}
    return _job({**doc, **fields})


def test_a_job_slurm_itself_would_not_start_says_why_and_is_not_placed():
    held = squeue_job(1, priority=0, state_reason="JobHeldUser")
    waiting_on = squeue_job(2, dependency="afterok:9(unfulfilled)", state_reason="Dependency")
    later = squeue_job(3, comment=f"vgpu-state=unplaced share=30 class=throughput begin={NOW + 600}")
    ready = squeue_job(4, comment=f"vgpu-state=unplaced share=30 class=throughput begin={NOW - 1}")
    assert "scontrol release 1" in held.waits_on_slurm(NOW)
    assert "afterok:9(unfulfilled)" in waiting_on.waits_on_slurm(NOW)
    assert time.strftime("(%Y-%m-%dT%H:%M:%S)", time.localtime(NOW + 600)) in later.waits_on_slurm(NOW)
    assert ready.waits_on_slurm(NOW) is None
    requests = waiting_requests([held, waiting_on, later, ready], set(), NOW).requests
    assert [r.job_id for r in requests] == ["4"]


def test_a_requeued_job_is_placed_no_sooner_than_slurm_would_start_it_again():
    """Slurm starts a requeued job (a failed prolog's, once released) 121 s after its requeue at
    the earliest; a pin's StartTime=now would undo that, and slurmd then ran no prolog for it."""
    requeued = squeue_job(5, restart_cnt=1, submit_time=NOW - 60)
    assert "121 s after its requeue" in requeued.waits_on_slurm(NOW)
    assert waiting_requests([requeued], set(), NOW).requests == []
    assert requeued.waits_on_slurm(NOW + 61) is None
    assert squeue_job(6, restart_cnt=0, submit_time=NOW - 60).waits_on_slurm(NOW) is None


def test_jobs_slurm_would_not_start_are_told_why_unless_placed_or_an_arrays_record():
    held = squeue_job(1, priority=0, state_reason="JobHeldUser")
    waiting_on = squeue_job(2, dependency="afterok:9(unfulfilled)", state_reason="Dependency")
    placed_held = squeue_job(3, priority=0, state_reason="JobHeldAdmin")
    array = squeue_job(4, priority=0, array_job_id=4, array_task_string="1-3")
    # requeued a minute ago for an MPS fault: Slurm's delay passes by itself, and the fault stays its reason
    requeued = squeue_job(6, 'vgpu-state=unplaced share=30 class=throughput wait="MPS fatal fault"',
                          restart_cnt=1, submit_time=NOW - 60)
    assert requeued.waits_on_slurm(NOW) is not None
    told = waiting_on_slurm([held, waiting_on, placed_held, array, squeue_job(5), requeued], {3}, NOW)
    assert [(b.job_id, b.reason, b.never) for b in told] == [
        ("1", "held (JobHeldUser); release it with scontrol release 1", False),
        ("2", "waits for its dependency afterok:9(unfulfilled)", False)]


def test_waiting_jobs_are_placed_in_slurms_priority_order_then_oldest_first():
    jobs = [squeue_job(1, priority=10), squeue_job(2, priority=30), squeue_job(3, priority=30, submit_time=NOW - 99)]
    assert [r.job_id for r in waiting_requests(jobs, set(), NOW).requests] == ["3", "2", "1"]


def test_a_class_weight_raises_or_lowers_slurms_priority_in_the_placement_order():
    latency = "vgpu-state=unplaced share=30 class=latency"
    best_effort = "vgpu-state=unplaced share=30 class=best-effort"
    jobs = [squeue_job(1, best_effort, priority=500), squeue_job(2, priority=400), squeue_job(3, latency, priority=100)]
    assert [r.job_id for r in waiting_requests(jobs, set(), NOW).requests] == ["1", "2", "3"]
    weights = {"latency": 1000, "best-effort": -200}
    assert [r.job_id for r in waiting_requests(jobs, set(), NOW, class_priority=weights).requests] == ["3", "2", "1"]


def test_a_user_whose_pin_slurm_holds_for_a_qos_limit_gets_no_new_pin_until_it_starts():
    held = squeue_job(1, comment="vgpu-state=pinned share=50 class=throughput gpu=GPU-1",
                      tres_per_node="gres:vgpu:a100_1:50", state_reason="QOSMaxGRESPerUser")
    same_user = squeue_job(2)
    other_user = squeue_job(3, user_id=1001)
    assert held.held_by_limit and not same_user.held_by_limit
    assert [r.job_id for r in waiting_requests([held, same_user, other_user], {1}, NOW).requests] == ["3"]
    started = replace(held, state="RUNNING", reason="None")
    assert [r.job_id for r in waiting_requests([started, same_user], {1}, NOW).requests] == ["2"]


def test_partition_exclude_and_the_users_nodelist_restrict_the_nodes():
    plain = squeue_job(1)
    assert plain.allowed_nodes(NODES) == {"a1", "a2", "b2"}
    debug = squeue_job(2, partition="debug", excluded_nodes="b1")
    assert debug.allowed_nodes(NODES) == {"a2"}
    listed = squeue_job(3, comment="vgpu-state=unplaced share=30 class=throughput nodelist=a[1-2],b2",
                        partition="gpu,debug", required_nodes="b9")  # Slurm's own field holds the pin
    assert listed.allowed_nodes(NODES) == {"a1", "a2", "b2"}
    requests = waiting_requests([plain, debug], set(), NOW, refused={1: {"a1"}}, nodes=NODES,
                                gpu_nodes=["a1", "a2", "b2"]).requests
    assert [r.nodes for r in requests] == [frozenset({"a2", "b2"}), frozenset({"a2"})]
    everywhere = waiting_requests([plain], set(), NOW, nodes=NODES, gpu_nodes=["a1", "a2", "b2"]).requests
    assert everywhere[0].nodes is None  # no restriction: the grouped fast path decides it


def test_nodes_slurm_would_start_nothing_on_are_named_with_their_state():
    assert unusable_nodes(NODES) == {"b1": "Slurm reports node b1 drain", "b2": "Slurm reports node b2 down*"}


def test_a_node_the_backfill_scheduler_planned_for_a_waiting_job_still_takes_slices():
    planned = {"a1": Node("mix-", frozenset({"gpu"})), "a2": Node("idle-", frozenset({"gpu"})),
               "b1": Node("drain-", frozenset({"gpu"}))}
    assert unusable_nodes(planned) == {"b1": "Slurm reports node b1 drain-"}


def test_the_pinned_gres_reads_in_each_releases_spelling():
    assert pinned_gres("gres:vgpu:h100_0:30") == [("h100_0", 30)]
    assert pinned_gres("gres/gpu:1,gres/vgpu:t4_7:100") == [("t4_7", 100)]
    assert pinned_gres("gres:vgpu:30") == []
    assert pinned_gres("") == []
    assert pinned_gres("gres/gpu:a100_1:1") == [("a100_1", 100)]  # a whole GPU: all of its units
    assert pinned_gres("gres:gpu:a100_0:1,gres:gpu:a100_3:1") == [("a100_0", 100), ("a100_3", 100)]


class Recording(Slurm):
    """Records the updates; slurmctld's submit time of every job is ``submitted`` (the jobs' own
    unless a test says slurmctld gave the id to another job)."""

    def __init__(self, submitted: int = NOW - 60):
        super().__init__()
        self.said = []
        self.submitted = submitted

    def _run(self, *argv, env=None):
        if argv[0] == "squeue":  # same_job's question
            return f"{self.submitted}\n"
        self.said.append(argv)
        return ""


def test_a_whole_gpu_job_is_placed_as_a_whole_gpu_and_pinned_as_gres_gpu():
    job = squeue_job(5, "vgpu-state=unplaced share=100 class=throughput model=a100 gpus=1")
    (request,) = waiting_requests([job], set(), NOW).requests
    assert request.whole and request.gpus == 1 and request.share == 100 and request.models == frozenset({"a100"})
    slurm = Recording()
    slurm.pin(job, ["a100_1"], 100, "a1", job.request)
    slurm.pin(squeue_job(6), ["a100_0"], 30, "a1", squeue_job(6).request)
    assert [a[3] for a in slurm.said] == ["Gres=gpu:a100_1:1", "Gres=vgpu:a100_0:30"]


def test_a_job_of_several_whole_gpus_is_placed_as_one_request_and_pinned_in_one_update():
    job = squeue_job(5, "vgpu-state=unplaced share=100 class=throughput gpus=2")
    (request,) = waiting_requests([job], set(), NOW).requests
    assert request.whole and request.gpus == 2
    slurm = Recording()
    slurm.pin(job, ["a100_0", "a100_3"], 100, "a1", job.request)
    (update,) = slurm.said
    assert update[3] == "Gres=gpu:a100_0:1,gpu:a100_3:1" and update[4] == "NodeList=a1"


def test_no_update_reaches_a_job_that_took_the_id_of_the_job_read():
    """A slurmctld back from older state gives a forgotten job's id to the next submission: an
    update meant for the job read a moment before would give the new one its request."""
    read = squeue_job(5, "vgpu-state=unplaced share=40 class=latency")
    slurm = Recording(submitted=NOW - 5)  # id 5 now names a job submitted later
    for update in (lambda: slurm.pin(read, ["a100_1"], 40, "a1", read.request),
                   lambda: slurm.set_comment(read, read.request), lambda: slurm.hold(read, read.request),
                   lambda: slurm.cancel(read, read.request), lambda: slurm.signal(read, "TERM")):
        with pytest.raises(SlurmError, match="not the job read a moment ago"):
            update()
    assert slurm.said == []


def test_a_jobs_placements_make_one_pin_with_every_gpu():
    class Gpu:
        def __init__(self, gres_type):
            self.gres_type, self.node = gres_type, "a1"

    gpus = {"GPU-0": Gpu("a100_0"), "GPU-3": Gpu("a100_3"), "GPU-5": Gpu("a100_5")}
    made = pins([(5, 11, "GPU-0", 100), (6, 12, "GPU-5", 30), (5, 13, "GPU-3", 100)], gpus)
    assert [(p.job_id, p.placement_ids, p.gres_types, p.gpu_uuids) for p in made] == [
        (5, (11, 13), ("a100_0", "a100_3"), ("GPU-0", "GPU-3")), (6, (12,), ("a100_5",), ("GPU-5",))]


def test_the_admin_comment_keeps_the_users_begin_and_nodelist_across_a_pin():
    request = parse_request("vgpu-state=unplaced share=30 class=latency mem_mib=8192 model=h100 begin=17 "
                            "nodelist=n[1-2]")
    assert (request.begin, request.nodelist, request.memory_mib, request.model) == (17, "n[1-2]", 8192, "h100")
    assert parse_request(request.comment()) == request


def array_task(job_id: int, task: int, array: int = 10, **fields):
    """A task split off from its array: its own job id and record."""
    return squeue_job(job_id, array_job_id=array, array_task_id=task, array_task_string="", **fields)


def test_an_arrays_pending_tasks_are_split_off_in_order_and_placed_each_as_its_own_job():
    record = squeue_job(10, array_job_id=10, array_task_string="1-4")  # as 22.05 shows a pending array
    assert record.holds_array_tasks and record.pending_tasks() == [1, 2, 3, 4] and record.array_task_id is None
    assert waiting_requests([record], set(), NOW).requests == []  # the record of several tasks is never placed
    assert [(r.array_job_id, t) for r, t in array_splits([record], set(), NOW, most=2)] == [(10, 1), (10, 2)]
    # the last task is never split: the record turns into that task itself
    assert [t for _, t in array_splits([record], set(), NOW)] == [1, 2, 3]
    split = [array_task(11, 1), array_task(12, 2)]
    rest = squeue_job(10, array_job_id=10, array_task_string="3-4")
    assert [r.job_id for r in waiting_requests([rest, *split], set(), NOW).requests] == ["11", "12"]
    assert array_splits([rest, *split], set(), NOW) == []  # its split tasks still wait for a GPU
    assert [t for _, t in array_splits([rest, *split], {11, 12}, NOW)] == [3]  # both placed: next


def test_an_arrays_throttle_bounds_its_tasks_placed_and_split():
    record = squeue_job(10, array_job_id=10, array_task_string="3-8%2", array_max_tasks=2)
    assert record.pending_tasks() == [3, 4, 5, 6, 7, 8]
    running = array_task(11, 1, array_max_tasks=2, job_state="RUNNING",
                        admin_comment="vgpu-state=pinned share=30 class=throughput")
    waiting = array_task(12, 2, array_max_tasks=2)
    assert [r.job_id for r in waiting_requests([record, running, waiting], set(), NOW).requests] == ["12"]
    assert array_splits([record, running], set(), NOW) == [(record, 3)]
    assert array_splits([record, running, waiting], {12}, NOW) == []  # 2 of 2 run or are placed
    second = array_task(13, 3, array_max_tasks=2)
    assert [r.job_id for r in waiting_requests([record, running, waiting, second], set(), NOW).requests] == ["12"]


def test_a_held_array_is_not_split():
    held = squeue_job(10, array_job_id=10, array_task_string="1-4", priority=0, state_reason="JobHeldUser")
    assert array_splits([held], set(), NOW) == []


def test_array_task_strings_read_as_slurm_writes_them():
    assert array_task_ids("1-3,7,10-14:2%4") == [1, 2, 3, 7, 10, 12, 14]
    assert not squeue_job(10, array_job_id=10, array_task_id=4, array_task_string="").holds_array_tasks
    record = _job({"job_id": 5, "array_job_id": {"set": True, "number": 5}, "array_task_id": {"set": False, "number": 0},
                   "array_task_string": "1-2", "array_max_tasks": {"set": True, "number": 0}, "job_state": ["PENDING"]})
    assert (record.array_job_id, record.array_task_id, record.array_max_tasks) == (5, None, 0)
    # 26.05: the record down to its last pending task names that task in array_task_string only
    last = _job({"job_id": 1, "array_job_id": {"set": True, "number": 1}, "array_task_id": {"set": False, "number": 0},
                 "array_task_string": "8", "array_max_tasks": {"set": True, "number": 0}, "job_state": ["PENDING"]})
    assert (last.array_task_id, last.holds_array_tasks, last.ref) == (8, False, "1_8")


def test_slurms_commands_name_an_array_task_alone_by_array_and_task():
    # JobId=<array id> names every task of the array, the record that became the last task included
    assert array_task(10, 8).ref == "10_8" and array_task(11, 1).ref == "10_1"
    assert squeue_job(3).ref == 3


def test_sinfo_gives_a_nodes_idle_cpus_and_unallocated_memory():
    assert node_room("6/2/0/8", "16000", "12000") == (2, 4000)
    assert node_room("0/0/8/8", "16000", "0") == (0, 16000)  # memory no consumable resource: all free
    assert node_room("N/A", "", "") == (None, None)


def test_a_job_reads_its_cpus_and_memory_on_each_releases_json():
    assert (_job({"job_id": 1, "cpus": 4, "memory_per_node": None, "memory_per_cpu": 2048}).cpus,
            _job({"job_id": 1, "cpus": 4, "memory_per_cpu": 2048}).memory_mib) == (4, 8192)
    newer = _job({"job_id": 1, "cpus": {"set": True, "infinite": False, "number": 2},
                  "memory_per_node": {"set": True, "infinite": False, "number": 4096},
                  "memory_per_cpu": {"set": False, "infinite": False, "number": 0}})
    assert (newer.cpus, newer.memory_mib) == (2, 4096)
    assert _job({"job_id": 1}).memory_mib is None and _job({"job_id": 1}).cpus == 1


def test_a_job_is_placed_only_on_nodes_with_its_cpus_and_memory_idle_or_told_why_it_waits():
    nodes = {"a1": Node("mix", frozenset({"gpu"}), cpus_idle=2, memory_free_mib=64000),
             "a2": Node("mix", frozenset({"gpu"}), cpus_idle=8, memory_free_mib=2000),
             "a3": Node("idle", frozenset({"gpu"}), cpus_idle=8, memory_free_mib=64000)}
    gpus = [GpuState(f"{n}-0", n, 0, "A100", 40960) for n in nodes]
    jobs = {j.job_id: j for j in (
        replace(squeue_job(1), cpus=16),  # nowhere: waits
        replace(squeue_job(2), cpus=4, memory_mib=8000),  # a3 only
        replace(squeue_job(3), cpus=4),  # a2 (a3's GPU is taken by then)
        replace(squeue_job(4), cpus=1),  # a1
    )}
    requests = waiting_requests(list(jobs.values()), set(), NOW, nodes=nodes, gpu_nodes=nodes).requests
    result = place_slices(gpus, requests, PolicyConfig(policy="first-fit", latency_max_cotenants=0),
                          node_states(nodes, nodes, jobs, []))
    assert {d.job_id: d.node for d in result.decisions} == {"2": "a3", "3": "a2", "4": "a1"}
    assert [(b.job_id, b.reason) for b in result.blocked] == [
        ("1", "needs 16 CPUs on a node with a fitting GPU; the most free is 8")]


def test_the_cpus_and_memory_of_jobs_pinned_and_not_started_are_not_counted_idle():
    """Slurm counts a job's CPUs and memory on its node once it starts; until then the pin holds them."""
    nodes = {"a1": Node("mix", frozenset({"gpu"}), cpus_idle=8, memory_free_mib=64000),
             "c1": Node("idle", frozenset({"cpu"}), cpus_idle=64, memory_free_mib=256000),
             "a2": Node("mix", frozenset({"gpu"}))}
    jobs = {1: replace(squeue_job(1), cpus=4, memory_mib=16000), 2: replace(squeue_job(2, job_state="RUNNING"), cpus=2)}
    assert node_states(nodes, ["a1", "a2"], jobs, [(1, "a1"), (2, "a1"), (9, "a1")]) == [
        NodeState("a1", 4000, 48000),  # job 2 runs: sinfo counts it already; job 9 is gone
        NodeState("a2", None, None)]  # a node that says nothing constrains nothing; c1 has no GPU


def test_a_drained_node_with_no_idle_cpu_says_it_is_drained():
    """sinfo counts a drained node's CPUs as other, none idle: the policy's reason is the drain (its
    GPUs are unavailable), not a want of CPUs."""
    nodes = {"a1": Node("drain", frozenset({"gpu"}), cpus_idle=0, memory_free_mib=8192)}
    jobs = {1: squeue_job(1)}
    gpus = [GpuState("a1-0", "a1", 0, "A100", 40960, available=False, unavailable_reason="Slurm reports node a1 drain")]
    result = place_slices(gpus, waiting_requests(list(jobs.values()), set(), NOW, nodes=nodes, gpu_nodes=nodes).requests,
                          PolicyConfig(), node_states(nodes, nodes, jobs, []))
    assert [b.reason for b in result.blocked] == ["every GPU is drained or down (Slurm reports node a1 drain)"]


def test_a_requeued_job_every_gpu_node_refused_is_ended_with_the_reason_a_fresh_one_waits():
    """Seen on Slurm 22.05 after a prolog failed during a database outage: the requeued job was
    held never runnable wherever it was pinned, on every GPU node, for as long as it waited."""
    nodes = {name: Node("idle", frozenset({"gpu"})) for name in ("n1", "n2")}
    requeued = squeue_job(6, restart_cnt=1, submit_time=NOW - 600)
    fresh = squeue_job(7)
    refused = {6: {"n1", "n2"}, 7: {"n1", "n2"}}
    requests, shut_out = waiting_requests([requeued, fresh], set(), NOW, refused, nodes, ["n1", "n2"])
    assert [(b.job_id, b.never) for b in shut_out] == [("6", True)]
    assert "since Slurm requeued it, every GPU node refuses its pin" in shut_out[0].reason
    assert [(r.job_id, r.nodes) for r in requests] == [("7", frozenset())]  # the policy says it waits
    some = waiting_requests([requeued], set(), NOW, {6: {"n1"}}, nodes, ["n1", "n2"]).requests
    assert [(r.job_id, r.nodes) for r in some] == [("6", frozenset({"n2"}))]
