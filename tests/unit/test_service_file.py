"""Service files (slurm_vgpu.route.service): what a user writes to serve a model from several vgpu
jobs, and every mistake in it reported at once, each with its line and what to write instead."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from slurm_vgpu.adapters.slurm import Job
from slurm_vgpu.catalog import MODELS
from slurm_vgpu.cli import main
from slurm_vgpu.route.service import ServiceError, parse
from slurm_vgpu.route.serving import Deployment, ServeError, prior_rates, sbatch_options, sized, to_submit_again
from slurm_vgpu.route.weights import weights

GOOD = """\
# the chat model, three replicas behind one router
Name=chat
Command=python3 serve.py --port %p --tag '#1'
Port=9100
Replicas=3
share=30            # keys without case, as Slurm's
Class=latency
Memory=8G
Listen=0.0.0.0:8080
"""


def test_a_service_file_gives_each_replica_its_own_port():
    service = parse(GOOD)
    assert (service.name, service.replicas, service.share, service.slo_class, service.memory_mib, service.listen) == (
        "chat", 3, 30, "latency", 8192, ("0.0.0.0", 8080))
    # the command keeps its #, and replica i listens on Port + i
    assert [service.replica_command(i) for i in range(3)] == [
        f"python3 serve.py --port {p} --tag '#1'" for p in (9100, 9101, 9102)]


def test_the_class_defaults_as_for_any_vgpu_job():
    assert parse(GOOD.replace("Class=latency\n", "")).slo_class == "throughput"


def test_a_profile_is_named_as_for_sbatch_vgpu_profile():
    assert parse(GOOD).profile is None and parse(GOOD + "Profile=chat-7b\n").profile == "chat-7b"


def test_every_problem_is_named_at_once_with_its_line_and_what_to_write():
    text = """\
Name=9chat
Comand=serve --port %p
Port=80
Replicas=0
Share=130
Class=urgent
Listen=8080
Share=20
just words
"""
    with pytest.raises(ServiceError) as caught:
        parse(text, "chat.svc")
    assert str(caught.value).splitlines() == [
        "chat.svc:1: Name=9chat: a name starts with a letter; letters, digits and _.:- only, e.g. Name=chat",
        "chat.svc:2: unknown key 'Comand'; did you mean 'Command'?",
        "chat.svc:3: Port=80: a port from 1024 to 65535, the first replica's, e.g. Port=9100",
        "chat.svc:4: Replicas=0: a whole number of replicas from 1 to 64, e.g. Replicas=3",
        "chat.svc:5: Share=130: each replica's % of one GPU, 1 to 100, e.g. Share=30",
        "chat.svc:6: Class=urgent: one of latency, throughput or best-effort, e.g. Class=latency",
        "chat.svc:7: Listen=8080: the router's address and port, e.g. Listen=0.0.0.0:8080",
        "chat.svc:8: Share is given twice; keep one",
        "chat.svc:9: expected Key=Value, got 'just words'",
        "chat.svc: Command is missing; add Command=...",
    ]


@pytest.mark.parametrize("change, problem", [
    (("Command=python3 serve.py --port %p --tag '#1'", "Command=python3 serve.py"), "must take its port from %p"),
    (("Replicas=3\n", ""), "Replicas is missing; add Replicas=..."),
    (("Port=9100", "Port=65535"), "end above 65535"),
    (("Memory=8G", "Memory=lots"), "GPU memory cap"),
    (("Replicas=3", "Replicas=3\nModel=h100,,t4"), "a GPU model, or several in turn, e.g. Model=h100 or "
                                                  "Model=h100,a100"),
    (("Replicas=3", "Replicas=3\nRates=200/s"), "unknown key 'Rates'; did you mean 'Rate'?"),
    (("Class=latency", "Class=latency\nProfile=-chat"), "write Profile=NAME, a profiled workload"),
    (("Replicas=3", "Rate=200/s"), "Rate sizes the replicas from the workload's profile; add Profile=NAME"),
    (("Replicas=3", "Replicas=3\nRate=200/s\nProfile=chat"), "Replicas and Rate are both given; keep one"),
    (("Replicas=3", "Rate=fast\nProfile=chat"), "Rate=fast: the requests per second the service must carry, "
                                                 "e.g. Rate=200/s"),
])
def test_a_service_that_cannot_run_as_written_says_what_to_write(change, problem):
    with pytest.raises(ServiceError, match=problem):
        parse(GOOD.replace(*change))


def test_each_replica_is_a_vgpu_job_with_the_service_s_slice_and_its_own_output(tmp_path):
    service = parse(GOOD.replace("Replicas=3", "Replicas=3\nModel=a100\nPartition=infer"))
    assert sbatch_options(service, 1, tmp_path) == [
        "--gres=vgpu:a100:30", "--vgpu-class=latency", "--job-name=chat-1", f"--output={tmp_path}/chat-1.out",
        "--open-mode=append", "--vgpu-mem=8192M", "--partition=infer"]
    assert sbatch_options(parse(GOOD.replace("Memory=8G\n", "")), 0, tmp_path)[:1] == ["--gres=vgpu:30"]
    # replicas over several models, in turn
    spread = parse(GOOD.replace("Replicas=3", "Replicas=3\nModel=h100, t4"))
    assert [sbatch_options(spread, i, tmp_path)[:3:2] for i in range(3)] == [
        ["--gres=vgpu:h100:30", "--job-name=chat-0"], ["--gres=vgpu:t4:30", "--job-name=chat-1"],
        ["--gres=vgpu:h100:30", "--job-name=chat-2"]]


def test_without_a_profile_weights_follow_each_replica_s_gpu_speed_and_the_site_s_speeds_come_first():
    def on(gres: str) -> Job:
        return Job(job_id=1, user_id=0, user_name="u", state="RUNNING", priority=0, submit_time=0, nodes="n1",
                   tres_per_node=gres, request=None)
    running = {"a": on("gres:vgpu:h100_0:30"), "b": on("gres/vgpu:a100_2:30"), "c": on("gres:vgpu:t4_1:30")}
    speeds = {m: MODELS[m].speed for m in ("h100", "a100", "t4")}
    assert weights(prior_rates(running, 30, {}, {})) == {
        "a": 256, "b": round(256 * speeds["a100"] / speeds["h100"]), "c": round(256 * speeds["t4"] / speeds["h100"])}
    assert weights(prior_rates(running, 30, {}, {"t4": speeds["h100"]}))["c"] == 256
    # a profile's measured throughputs come before any speed: here the T4 serves this workload best
    assert weights(prior_rates(running, 30, {"h100": 50.0, "a100": 50.0, "t4": 100.0}, {})) == {"a": 128, "b": 128, "c": 256}


def test_a_rate_sizes_the_replicas_from_the_profile_on_the_slowest_model_or_the_one_named():
    service = parse(GOOD.replace("Replicas=3", "Rate=200/s\nProfile=chat"))
    assert (service.replicas, service.rate, service.profile) == (None, 200.0, "chat")
    profiled = {1: {"a100": 100.0, "t4": 25.0}, 8: {"a100": 400.0, "t4": 50.0}}  # requests/s of a replica at 30%
    assert sized(service, profiled).replicas == 10  # 200/s at 80% of the T4's 25/s (the smallest batch's)
    on_a100 = parse(GOOD.replace("Replicas=3", "Rate=200/s\nProfile=chat\nModel=a100"))
    assert sized(on_a100, profiled).replicas == 3
    # in turn on an A100 (80/s carried) and a T4 (20/s): two turns
    assert sized(parse(GOOD.replace("Replicas=3", "Rate=200/s\nProfile=chat\nModel=a100,t4")), profiled).replicas == 4
    assert sized(parse(GOOD), profiled).replicas == 3  # Replicas= as written
    with pytest.raises(ServeError, match="Profile=chat has no curve on h100; measure it there"):
        sized(parse(GOOD.replace("Replicas=3", "Rate=200/s\nProfile=chat\nModel=h100")), profiled)
    with pytest.raises(ServeError, match="needs 500 replicas of 30% .* at most 64: give a larger Share or a lower Rate"):
        sized(parse(GOOD.replace("Replicas=3", "Rate=10000/s\nProfile=chat")), profiled)


def test_a_replica_whose_job_ended_is_submitted_again_but_not_for_ever():
    def job(state: str) -> Job:
        return Job(job_id=1, user_id=0, user_name="u", state=state, priority=0, submit_time=0, nodes="n1",
                   tres_per_node="", request=None)
    now = 10_000.0
    deployment = Deployment("chat", "/tmp/chat", ("127.0.0.1", 8080), 30, jobs={"a": 1, "b": 2, "c": 3, "d": 4, "e": 5},
                            ports={}, router_pid=0,
                            submissions={n: (["--gres=vgpu:30"], "serve") for n in "abcd"},
                            restarts={"b": [now - 900, now - 800, now - 700], "c": [now - 300, now - 200, now - 100]})
    jobs = {"a": job("RUNNING"), "b": job("FAILED"), "c": job("NODE_FAIL"), "e": job("FAILED")}
    # a runs; b failed, its restarts long ago; c failed a 4th time in 10 minutes: it stays ended;
    # d is gone from Slurm; e was started without its submission kept (an older state file)
    assert to_submit_again(deployment, jobs, now) == ["b", "d"]
    assert to_submit_again(deployment, {**jobs, "b": job("PENDING"), "d": job("RUNNING")}, now) == []


def test_serve_check_says_what_a_good_file_will_run(tmp_path):
    fixed, sized_later = tmp_path / "fixed.svc", tmp_path / "rate.svc"
    fixed.write_text(GOOD.replace("Replicas=3", "Replicas=3\nModel=h100,t4"))
    sized_later.write_text(GOOD.replace("Replicas=3", "Rate=200/s\nProfile=chat"))
    assert CliRunner().invoke(main, ["serve", "check", str(fixed)]).output == (
        "chat: 3 replica(s) of 30% on h100/t4 (latency), ports 9100-9102, router on 0.0.0.0:8080\n")
    assert CliRunner().invoke(main, ["serve", "check", str(sized_later)]).output == (
        "chat: replicas for 200/s (sized from profile chat at start) of 30% (latency), ports from 9100, "
        "router on 0.0.0.0:8080\n")
