"""Which best-effort slices a waiting latency slice requeues (slurm_vgpu.policy.preemption)."""
from __future__ import annotations

from slurm_vgpu.policy import GpuState, NodeState, PolicyConfig, Request, SloClass
from slurm_vgpu.policy.preemption import Tenant, choose_victims

BE, TP, LAT = SloClass.BEST_EFFORT, SloClass.THROUGHPUT, SloClass.LATENCY
CONFIG = PolicyConfig(multi_user=True)


def gpu(uuid: str, tenants: list[Tenant], node: str = "n1", speed: float = 1.0, multi_user: bool = True,
        memory_mib: int = 81920) -> GpuState:
    return GpuState(uuid=uuid, node=node, index=int(uuid[-1]), model="H100", memory_mib=memory_mib, speed=speed,
                    used=sum(t.share for t in tenants),
                    memory_used_mib=sum(t.memory_mib or 0 for t in tenants),
                    user=None if multi_user or not tenants else tenants[0].user,
                    classes=tuple(t.slo_class for t in tenants),
                    capped_users=frozenset(t.user for t in tenants if t.memory_mib is not None),
                    uncapped_users=frozenset(t.user for t in tenants if t.memory_mib is None))


def slice_(job: str, share: int, cls: SloClass = BE, run_s: float = 60, user: int = 1, **kw) -> Tenant:
    return Tenant(job, share, user, cls, run_s=run_s, **kw)


def latency(share: int, user: int = 1, **kw) -> Request:
    return Request("new", share, user=user, slo_class=LAT, **kw)


def victims(request: Request, *gpus_tenants: tuple[GpuState, list[Tenant]], config: PolicyConfig = CONFIG,
            nodes=None):
    chosen = choose_victims(request, [g for g, _ in gpus_tenants], {g.uuid: t for g, t in gpus_tenants}, config,
                            nodes=nodes)
    return None if chosen is None else (chosen.gpu_uuid, sorted(chosen.victims))


def on_one_gpu(tenants: list[Tenant], **kw) -> tuple[GpuState, list[Tenant]]:
    return gpu("g0", tenants, **kw), tenants


def test_the_slice_that_has_run_least_is_requeued_and_only_it():
    tenants = [slice_("old", 30, run_s=600), slice_("mid", 40, run_s=300), slice_("young", 30, run_s=20)]
    assert victims(latency(30), on_one_gpu(tenants)) == ("g0", ["young"])


def test_work_lost_weighs_share_times_time():
    # 10% for 500 s loses less than 60% for 100 s
    tenants = [slice_("small-long", 10, run_s=500), slice_("big-short", 60, run_s=100), slice_("rest", 30, run_s=900)]
    assert victims(latency(10), on_one_gpu(tenants)) == ("g0", ["small-long"])


def test_latency_and_throughput_slices_are_never_requeued():
    tenants = [slice_("tp", 70, TP, run_s=1), slice_("be", 30, run_s=900)]
    assert victims(latency(30), on_one_gpu(tenants)) == ("g0", ["be"])
    assert victims(latency(50), on_one_gpu(tenants)) is None  # only the throughput slice's room would do
    assert victims(latency(30), on_one_gpu([slice_("lat", 80, LAT), slice_("be", 20)])) is None


def test_a_job_slurm_would_not_requeue_is_never_a_victim():
    tenants = [slice_("no-requeue", 50, run_s=1, requeueable=False), slice_("be", 50, run_s=900)]
    assert victims(latency(50), on_one_gpu(tenants)) == ("g0", ["be"])
    assert victims(latency(60), on_one_gpu(tenants)) is None


def test_never_more_victims_than_needed_even_when_a_bigger_one_lost_less():
    tenants = [slice_("a", 30, run_s=10), slice_("b", 30, run_s=10), slice_("c", 40, run_s=1000)]
    assert victims(latency(60), on_one_gpu(tenants)) == ("g0", ["a", "b"])
    # two slices that lost less together go before one that lost more alone
    tenants = [slice_("a", 20, run_s=10), slice_("b", 20, run_s=10), slice_("c", 60, run_s=1000)]
    assert victims(latency(40), on_one_gpu(tenants)) == ("g0", ["a", "b"])


def test_only_best_effort_requests_of_latency_class_preempt():
    tenants = [slice_("be", 100, run_s=1)]
    for cls in (TP, BE):
        assert victims(Request("new", 30, user=1, slo_class=cls), on_one_gpu(tenants)) is None
    assert victims(latency(100, whole=True), on_one_gpu(tenants)) is None  # whole GPUs are Slurm's own


def test_the_gpu_that_loses_least_work_is_chosen():
    first = gpu("g0", [slice_("long", 50, run_s=900), slice_("x", 50, TP)])
    second = gpu("g1", [slice_("short", 50, run_s=30), slice_("y", 50, TP)])
    assert victims(latency(50), (first, [slice_("long", 50, run_s=900), slice_("x", 50, TP)]),
                   (second, [slice_("short", 50, run_s=30), slice_("y", 50, TP)])) == ("g1", ["short"])


def test_another_users_gpu_is_emptied_of_that_user_when_mps_is_single_user():
    tenants = [slice_("a", 50, run_s=10, user=1), slice_("b", 50, run_s=900, user=1)]
    single = PolicyConfig(multi_user=False)
    # user 2's 30% needs a GPU no other user's MPS server holds: both slices go, though one frees room enough
    assert victims(latency(30, user=2), on_one_gpu(tenants, multi_user=False), config=single) == ("g0", ["a", "b"])
    assert victims(latency(30, user=1), on_one_gpu(tenants, multi_user=False), config=single) == ("g0", ["a"])


def test_the_latency_co_tenant_cap_counts_the_slices_left():
    tenants = [slice_(f"s{i}", 10, run_s=10 * (i + 1)) for i in range(5)]  # 50% free, five slices
    capped = PolicyConfig(multi_user=True, latency_max_cotenants=2)
    assert victims(latency(10), on_one_gpu(tenants), config=capped) == ("g0", ["s0", "s1", "s2"])


def test_gpu_memory_must_be_freed_too():
    tenants = [slice_("small", 40, run_s=10, memory_mib=8192), slice_("big", 40, run_s=900, memory_mib=60000)]
    request = latency(40, memory_mib=30000)  # 80 GiB GPU: 12 GiB free, the small one's 8 GiB is not enough
    assert victims(request, on_one_gpu(tenants)) == ("g0", ["big"])


def test_the_nodes_cpus_must_be_freed_too():
    tenants = [slice_("few-cpus", 50, run_s=10, cpu_milli=1000), slice_("many-cpus", 50, run_s=900, cpu_milli=4000)]
    request = latency(50, cpu_milli=3000)
    nodes = {"n1": NodeState("n1", cpu_milli_free=0, memory_mib_free=None)}
    assert victims(request, on_one_gpu(tenants), nodes=nodes) == ("g0", ["many-cpus"])
    assert victims(request, on_one_gpu(tenants)) == ("g0", ["few-cpus"])


def test_nothing_is_requeued_where_even_every_best_effort_slice_gone_leaves_too_little():
    tenants = [slice_("tp", 60, TP), slice_("be", 40, run_s=1)]
    assert victims(latency(50), on_one_gpu(tenants)) is None
    assert victims(latency(50), on_one_gpu([])) is None


def test_a_slice_of_another_gpu_goes_when_only_the_nodes_cpus_are_short():
    # g0 has the room but the node's CPUs are all taken, mostly by a best-effort slice on g1
    free_room = [slice_("tp", 50, TP, cpu_milli=1000)]
    other = [slice_("cpu-hog", 30, run_s=100, cpu_milli=6000), slice_("small", 30, run_s=10, cpu_milli=1000)]
    nodes = {"n1": NodeState("n1", cpu_milli_free=0)}
    request = latency(50, cpu_milli=4000)
    assert victims(request, (gpu("g0", free_room), free_room), (gpu("g1", other), other), nodes=nodes) == (
        "g0", ["cpu-hog"])
