"""The Slurm adapter on each release's real output (tests/fixtures/slurm/<release>/, captured from a
running dev cluster by ``slurm-vgpu-dev capture-fixtures``): the same jobs read as the same Jobs, the
same nodes as the same Nodes, whatever shape the release's JSON has."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from slurm_vgpu.adapters.slurm import Node, Slurm
from slurm_vgpu_dev.releases import RELEASES

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"


class Captured(Slurm):
    """Answers each command the adapter runs with what the release printed for it."""

    def __init__(self, release: str):
        super().__init__()
        self.dir = FIXTURES / release
        self.ids = json.loads((self.dir / "jobs.json").read_text())
        self.shown = json.loads((self.dir / "scontrol-show-job.json").read_text())

    def _run(self, *argv: str, env=None) -> str:
        from slurm_vgpu_dev.fixtures import COMMANDS

        for filename, (captured, _) in COMMANDS.items():
            if list(argv) == captured:
                return (self.dir / filename).read_text()
        if argv[:4] == ("scontrol", "show", "job", "-o"):
            name = next(n for n, i in self.ids.items() if str(i) == argv[4])
            return self.shown[name] + "\n"
        raise AssertionError(f"no capture for {argv}")


def jobs_by_name(release: str) -> dict[str, object]:
    slurm = Captured(release)
    by_id = {j.job_id: j for j in slurm.jobs()}
    return {name: by_id[job_id] for name, job_id in slurm.ids.items()}


def view(job) -> dict:
    """What the placement reads of a job, without what differs run to run (ids, times, GPU numbers)."""
    request = job.request
    return {
        "state": job.state, "user": job.user_name, "held": job.priority == 0, "nodes": job.nodes,
        "gres": job.tres_per_node.rsplit("_", 1)[0] + ":" + job.tres_per_node.rsplit(":", 1)[-1]
        if job.tres_per_node else "",
        "dependency": job.dependency.split(":")[0], "partition": job.partition,
        "request": None if request is None else (request.state, request.share, request.slo_class,
                                                 request.memory_mib, request.model),
    }


def test_every_offered_release_has_its_capture():
    assert sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()) == sorted(RELEASES)


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_each_fixture_job_reads_as_what_it_is(release):
    jobs = jobs_by_name(release)
    assert view(jobs["done"]) == {
        "state": "COMPLETED", "user": "root", "held": False, "nodes": "node1", "gres": "gres:vgpu:h100:30",
        "dependency": "", "partition": "gpu", "request": ("pinned", 30, "latency", 8192, "h100"),
    }
    assert view(jobs["running"])["state"] == "RUNNING" and jobs["running"].nodes == "node2"
    assert jobs["running"].tres_per_node.startswith("gres:vgpu:a100_")
    assert jobs["held"].state == "PENDING" and jobs["held"].priority == 0
    assert jobs["held"].waits_on_slurm(0).startswith("held (JobHeldUser)")
    assert jobs["waits-dependency"].dependency.startswith(f"afterok:{jobs['running'].job_id}")
    assert jobs["waits-dependency"].waits_on_slurm(0).startswith("waits for its dependency")
    assert jobs["plain"].state == "COMPLETED" and jobs["plain"].request is None
    assert jobs["cancelled"].state == "CANCELLED" and jobs["cancelled"].request.state == "unplaced"
    assert all(j.submit_time > 1_700_000_000 for j in jobs.values())
    assert all(j.priority > 0 for n, j in jobs.items() if n not in ("held", "cancelled", "done", "plain"))


@pytest.mark.parametrize("release", sorted(set(RELEASES) - {"22.05"}))
def test_newer_releases_read_as_22_05_does(release):
    assert {n: view(j) for n, j in jobs_by_name(release).items()} == \
        {n: view(j) for n, j in jobs_by_name("22.05").items()}


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_held_reads_scontrol_show_job(release):
    slurm = Captured(release)
    assert slurm.job_hold(slurm.ids["held"]).held is True
    assert slurm.job_hold(slurm.ids["running"]).held is False
    assert slurm.job_hold(slurm.ids["done"]) is None  # ended
    assert slurm.job_hold(slurm.ids["held"]).restarts == 0  # never requeued (the field, Restarts=, on every release)


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_nodes_and_their_reasons(release):
    slurm = Captured(release)
    nodes = slurm.nodes()
    assert {name: (n.state, n.partitions) for name, n in nodes.items()} == {
        "node1": ("idle", {"gpu"}), "node2": ("mix", {"gpu"}), "node3": ("drain", {"gpu"})}
    # 16 CPUs and 8 GiB each; node2 runs one 1-CPU job; memory is no consumable resource (CR_Core)
    assert {name: (n.cpus_idle, n.memory_free_mib) for name, n in nodes.items()} == {
        "node1": (16, 8192), "node2": (15, 8192), "node3": (0, 8192)}
    assert all(n.features == frozenset() for n in nodes.values())  # sinfo's "(null)": none
    assert slurm.node_reason("node3") == ("drain", "fixture: drained by an admin")


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_allocated_on_a_node_names_the_running_job_with_its_submit_time(release):
    slurm = Captured(release)
    running = jobs_by_name(release)["running"]
    assert slurm.allocated_on("node2") == {running.job_id: running.submit_time}


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_each_job_names_its_sluid_from_26_05_on(release):
    """A 26.05 job's cgroup directory is its SLUID; slurmctld's list is what names the job of one."""
    sluids = [job.sluid for job in Captured(release).jobs()]
    if release >= "26.05":
        assert sluids and all(s.startswith("s") and len(set(sluids)) == len(sluids) for s in sluids)
    else:
        assert set(sluids) == {""}
