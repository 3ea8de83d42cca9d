"""Service files (slurm_vgpu.route.service): what a user writes to serve a model from several vgpu
jobs, and every mistake in it reported at once, each with its line and what to write instead."""
from __future__ import annotations

import pytest

from slurm_vgpu.adapters.slurm import Job
from slurm_vgpu.catalog import MODELS
from slurm_vgpu.route.service import ServiceError, parse
from slurm_vgpu.route.serving import replica_weights, sbatch_options

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
    (("Replicas=3", "Replicas=3\nRate=200/s"), "unknown key 'Rate'"),
])
def test_a_service_that_cannot_run_as_written_says_what_to_write(change, problem):
    with pytest.raises(ServiceError, match=problem):
        parse(GOOD.replace(*change))


def test_each_replica_is_a_vgpu_job_with_the_service_s_slice_and_its_own_output(tmp_path):
    service = parse(GOOD.replace("Replicas=3", "Replicas=3\nModel=a100\nPartition=infer"))
    assert sbatch_options(service, "chat-1", tmp_path) == [
        "--gres=vgpu:a100:30", "--vgpu-class=latency", "--job-name=chat-1", f"--output={tmp_path}/chat-1.out",
        "--open-mode=append", "--vgpu-mem=8192M", "--partition=infer"]
    assert sbatch_options(parse(GOOD.replace("Memory=8G\n", "")), "chat-0", tmp_path)[:1] == ["--gres=vgpu:30"]


def test_weights_follow_each_replica_s_gpu_speed_and_the_site_s_speeds_come_first():
    def on(gres: str) -> Job:
        return Job(job_id=1, user_id=0, user_name="u", state="RUNNING", priority=0, submit_time=0, nodes="n1",
                   tres_per_node=gres, request=None)
    running = {"a": on("gres:vgpu:h100_0:30"), "b": on("gres/vgpu:a100_2:30"), "c": on("gres:vgpu:t4_1:30")}
    speeds = {m: MODELS[m].speed for m in ("h100", "a100", "t4")}
    assert replica_weights(running, 30, {}) == {
        "a": 256, "b": round(256 * speeds["a100"] / speeds["h100"]), "c": round(256 * speeds["t4"] / speeds["h100"])}
    assert replica_weights(running, 30, {"t4": speeds["h100"]})["c"] == 256
