"""The contract under attack, on a real Slurm: each test runs an attack as an unprivileged user and
asserts the refusal or the safe outcome. No user reaches a GPU without a placement, moves or
starts a waiting vgpu job, or holds GPUs with jobs Slurm would not start."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from ..conftest import TEST_SLURM, slurm
from .jobs import ensure_user, job, output, submit, submit_fails, wait_for, wait_until

pytestmark = pytest.mark.e2e

ATTACKER = "vgpu-mallory"
VICTIM = "vgpu-victor"


@pytest.fixture(scope="module", autouse=True)
def users():
    for user in (ATTACKER, VICTIM):
        ensure_user(user)


def probe(cluster) -> str:
    """A job script that tries to open every simulated GPU device file and prints, per file,
    ``<node> <minor> allowed|denied``. Without a driver, an open the cgroup allows fails ENXIO;
    one it denies fails EPERM ("Operation not permitted")."""
    return (f'for f in {cluster.device_dir}/nvidia*; do m=${{f##*nvidia}}; '
            f'if (exec 3<$f) 2>&1 | grep -q "not permitted"; then s=denied; else s=allowed; fi; '
            f'echo "$SLURMD_NODENAME $m $s"; done')


def device_access(cluster, engine, job_id: int) -> dict[int, str]:
    """Minor -> allowed|denied, for the GPUs of the node the job ran on."""
    lines = [line.split() for line in output(cluster, job_id).splitlines() if len(line.split()) == 3]
    assert lines, f"job {job_id} printed no probe: {output(cluster, job_id)!r}"
    node = lines[0][0]
    with engine.connect() as conn:
        minors = set(conn.scalars(sa.text("SELECT minor FROM gpus WHERE node = :n"), {"n": node}))
    return {int(minor): state for _, minor, state in lines if int(minor) in minors}


def placements_of(engine, job_ids) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT job_id, state FROM placements WHERE job_id = ANY(:ids)"),
                            {"ids": list(job_ids)}).all()


def test_updating_a_held_plain_job_gives_it_no_gpu(cluster, cluster_engine):
    probe_job = submit(cluster, "--hold", script=probe(cluster), user=ATTACKER)
    for change in ("Gres=vgpu:h100_0:70", "Gres=vgpu:70", "Gres=gpu:h100_0:1", "TresPerNode=gres/vgpu:70"):
        refused = slurm(cluster, "scontrol", "update", f"JobId={probe_job}", change, user=ATTACKER, check=False)
        assert refused.returncode != 0 and "Access/permission denied" in refused.stderr, change
    slurm(cluster, "scontrol", "release", str(probe_job), user=ATTACKER)
    assert wait_for(cluster, [probe_job])[probe_job]["JobState"] == "COMPLETED"
    access = device_access(cluster, cluster_engine, probe_job)
    assert access and set(access.values()) == {"denied"}, access
    assert placements_of(cluster_engine, [probe_job]) == []


def test_a_waiting_vgpu_job_cannot_be_moved_or_started_by_its_owner(cluster, cluster_engine):
    # --begin keeps it waiting without holding a GPU: the attempts below meet a job that waits.
    waiting = submit(cluster, "--gres=vgpu:t4:10", "--begin=now+600", script="true", user=ATTACKER)
    for change in ("StartTime=now", "NodeList=node3", "Gres=vgpu:t4_0:10", "ExcNodeList=node1",
                   "Partition=gpu", "Features=x", "NumNodes=2"):
        refused = slurm(cluster, "scontrol", "update", f"JobId={waiting}", change, user=ATTACKER, check=False)
        assert refused.returncode != 0 and "Access/permission denied" in refused.stderr, change
    state = job(cluster, waiting)
    assert state["JobState"] == "PENDING" and "vgpu-state=unplaced" in state["AdminComment"]
    assert state["TresPerNode"] in ("", "(null)")
    assert placements_of(cluster_engine, [waiting]) == []
    slurm(cluster, "scancel", str(waiting))


def test_jobs_slurm_would_not_start_hold_no_gpu(cluster, cluster_engine):
    later = [submit(cluster, "--gres=vgpu:a100:100", "--begin=now+3600", script="true", user=ATTACKER)
             for _ in range(4)]
    first = submit(cluster, script="sleep 4", user=ATTACKER)
    after = submit(cluster, "--gres=vgpu:a100:100", f"--dependency=afterok:{first}", script="true", user=ATTACKER)
    held = submit(cluster, "--hold", "--gres=vgpu:a100:100", script="true", user=ATTACKER)
    try:
        victim = submit(cluster, "--gres=vgpu:a100:20", script="true", user=VICTIM)
        assert wait_for(cluster, [victim], timeout=60)[victim]["JobState"] == "COMPLETED"
        assert placements_of(cluster_engine, [*later, held]) == []
        # Each says why it waits: Slurm's own reason, and what to do about a hold.
        wait_until("the held job's reason",
                   lambda: f'wait="held (JobHeldUser); release it with scontrol release {held}"'
                   in job(cluster, held)["AdminComment"])
        assert 'wait="waits for its --begin time (' in job(cluster, later[0])["AdminComment"]
        # Once Slurm would start them, they are placed like any other.
        assert wait_for(cluster, [after], timeout=90)[after]["JobState"] == "COMPLETED"
        slurm(cluster, "scontrol", "release", str(held), user=ATTACKER)
        assert wait_for(cluster, [held], timeout=60)[held]["JobState"] == "COMPLETED"
    finally:
        slurm(cluster, "scancel", *map(str, later), check=False)
    assert placements_of(cluster_engine, later) == []


# Every kind of bad submission the user guide lists, each refused at submit with what to write.
BAD_SUBMISSIONS = [
    (["--gres=vgpu:150"], "write --gres=vgpu:N with 1 <= N <= 100"),
    (["--gres=vgpu:0"], "is not a whole percentage of one GPU"),
    (["--gres=vgpu:h100:1.5"], "is not a whole percentage of one GPU"),
    (["--gres=vgpu:h100:x"], "is not a whole percentage of one GPU"),
    (["--gres=vgpu:h100:sxm:30"], "write --gres=vgpu:N or --gres=vgpu:MODEL:N"),
    (["--gres=vgpu:h200:30"], "no GPU model 'h200' in this cluster; models: a100, h100, t4"),
    (["--gres=vgpu:h100_0:30"], "write --gres=vgpu:h100:30 for any h100"),
    (["--gres=vgpu:10,vgpu:20"], "vgpu is requested twice"),
    (["--gres=vgpu:10", "--vgpu-class=fast"], "write --vgpu-class=latency"),
    (["--gres=vgpu:10", "--vgpu-mem=lots"], "e.g. --vgpu-mem=8G"),
    (["--gres=vgpu:10", "--vgpu-mem=0"], "e.g. --vgpu-mem=8G"),
    (["--gres=vgpu:10", "--vgpu-mem=8X"], "e.g. --vgpu-mem=8G"),
    (["--gres=vgpu:10", "--vgpu-mem="], "e.g. --vgpu-mem=8G"),
    (["--gres=vgpu:10", "--vgpu-mem=1234567890M"], "e.g. --vgpu-mem=8G"),
    (["--gres=vgpu:10", "--vgpu-mem=200G"], "fits no GPU here"),
    (["--vgpu-class=latency"], "add --gres=vgpu:N, or drop them"),
    (["--vgpu-mem=8G"], "add --gres=vgpu:N, or drop them"),
    (["--gres=gpu:9"], "write --gres=gpu:N or --gpus=N with 1 <= N <= 8"),
    (["--gres=gpu:1,vgpu:30"], "a job takes a slice or whole GPUs, not both"),
    (["--gres=gpu:1", "--gpus=1"], "whole GPUs are asked for twice"),
    (["--gres=gpu:1", "--vgpu-mem=8G"], "a whole GPU comes with all of its memory; drop --vgpu-mem"),
    (["--gres=gpu:h100_0:1"], "write --gres=gpu:h100:1 for any h100"),
    (["--gpus-per-task=1"], "write --gres=gpu:N or --gpus=N"),
    (["--gpus-per-socket=1", "--sockets-per-node=1"], "write --gres=gpu:N or --gpus=N"),
    (["--tres-per-task=gres/vgpu:10"], "vgpu is asked for per node only"),
    (["--gres=mps:50"], "not as gres/mps; write --gres=vgpu:N"),
    (["--gres=shard:1"], "not as gres/shard; write --gres=vgpu:N"),
    (["-N2", "--gres=vgpu:10"], "drop -N/--nodes"),
    (["--exclusive", "--gres=vgpu:10"], "drop it, or ask --gres=vgpu:100"),
    (["--gres=vgpu:10", "--wrap", "true", ":"], "a heterogeneous job cannot hold a GPU slice"),
    (["--gres=vgpu:10", "--cpus-per-gpu=2"], "write --cpus-per-task=N"),
    (["--gres=vgpu:10", "--mem-per-gpu=4G"], "write --mem=SIZE"),
    (["--gres=vgpu:10", "--ntasks-per-gpu=2"], "write --ntasks=N"),
    (["--gres=vgpu:10", "--gpu-bind=closest"], "--gpu-bind binds tasks to whole GPUs"),
    (["--gres=vgpu:10", "--gpu-freq=high"], "--gpu-freq sets the clocks of a whole GPU"),
]


def test_the_user_guide_lists_every_refused_submission():
    guide = (Path(__file__).resolve().parents[2] / "docs" / "user-guide.md").read_text()
    table = guide.split("## Errors at submit", 1)[1].split("\n## ", 1)[0]
    missing = [" ".join(options) for options, message in BAD_SUBMISSIONS if message not in table]
    assert len(BAD_SUBMISSIONS) >= 30 and not missing, missing


# Slurm refuses these itself, in sbatch or before job_submit.lua runs, with its own reason (seen on
# each release; docs/slurm-releases.md, docs/user-guide.md): still refused at submit, nothing queued.
INVALID_GRES = "Invalid generic resource (gres) specification"
INVALID_TRES = "Invalid Trackable RESource (TRES) specification"
REFUSED_BY_SLURM = {
    "22.05": {
        ("--gres=vgpu:h100:1.5",): INVALID_GRES,
        ("--gres=vgpu:h100:x",): INVALID_GRES,
        ("--gres=vgpu:h100:sxm:30",): INVALID_GRES,
        ("--gpus-per-task=1",): "--gpus-per-task used without either --gpus or -n/--ntasks",
        ("--tres-per-task=gres/vgpu:10",): "unrecognized option '--tres-per-task=gres/vgpu:10'",
        ("--gres=mps:50",): INVALID_GRES,
        ("--gres=shard:1",): INVALID_GRES,
        ("--gres=vgpu:10", "--mem-per-gpu=4G"): "Requested mem_per_tres=gres:gpu:4096 but did not request any GPU",
        ("--gres=vgpu:10", "--ntasks-per-gpu=2"): "--ntasks-per-tres needs either a GRES GPU specification",
    },
    "newer": {
        ("--gres=vgpu:h100:1.5",): INVALID_TRES,
        ("--gres=vgpu:h100:x",): INVALID_TRES,
        ("--gpus-per-task=1",): "--gpus-per-task or --tres-per-task used without either --gpus or -n/--ntasks",
        ("--tres-per-task=gres/vgpu:10",): "--tres-per-task used without -n/--ntasks is not allowed",
        ("--gres=mps:50",): INVALID_GRES,
        ("--gres=shard:1",): INVALID_GRES,
        ("--gres=vgpu:10", "--cpus-per-gpu=2"): "Requested cpus_per_tres=gres/gpu:2 but did not request any GPU",
        ("--gres=vgpu:10", "--mem-per-gpu=4G"): "Requested mem_per_tres=gres/gpu:4096 but did not request any GPU",
        ("--gres=vgpu:10", "--ntasks-per-gpu=2"): "--ntasks-per-tres needs either a GRES GPU specification",
    },
}


@pytest.mark.parametrize("options, message", BAD_SUBMISSIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_shapes_a_slice_cannot_take_are_refused_at_submit(cluster, options, message):
    said = submit_fails(cluster, *options, user=ATTACKER)
    by_slurm = REFUSED_BY_SLURM["22.05" if TEST_SLURM == "22.05" else "newer"].get(tuple(options))
    if by_slurm:
        assert by_slurm in said, said
    else:
        assert "slurm-vgpu: " in said and message in said, said


def test_a_drained_node_gets_no_slice_until_it_is_resumed(cluster, cluster_engine):
    slurm(cluster, "scontrol", "update", "NodeName=node3", "State=DRAIN", "Reason=attack-test")
    try:
        waiting = submit(cluster, "--gres=vgpu:t4:10", script="true", user=VICTIM)
        deadline = time.monotonic() + 30
        while "wait=" not in job(cluster, waiting)["AdminComment"]:
            assert time.monotonic() < deadline, job(cluster, waiting)
            time.sleep(0.5)
        comment = job(cluster, waiting)["AdminComment"]
        assert "node3 drain" in comment, comment
        assert placements_of(cluster_engine, [waiting]) == []
    finally:
        slurm(cluster, "scontrol", "update", "NodeName=node3", "State=RESUME")
    assert wait_for(cluster, [waiting], timeout=60)[waiting]["JobState"] == "COMPLETED"


def test_partition_exclude_and_nodelist_are_where_the_slice_goes(cluster):
    elsewhere = submit(cluster, "--exclude=node1", "--gres=vgpu:10", script="true", user=VICTIM)
    there = submit(cluster, "--nodelist=node3", "--gres=vgpu:10", script="true", user=VICTIM)
    nowhere = submit(cluster, "--exclude=node1", "--gres=vgpu:h100:10", script="true", user=VICTIM)
    done = wait_for(cluster, [elsewhere, there], timeout=60)
    assert done[elsewhere]["JobState"] == "COMPLETED" and done[elsewhere]["NodeList"] != "node1"
    assert done[there]["JobState"] == "COMPLETED" and done[there]["NodeList"] == "node3"
    deadline = time.monotonic() + 30
    while "wait=" not in job(cluster, nowhere)["AdminComment"]:
        assert time.monotonic() < deadline, job(cluster, nowhere)
        time.sleep(0.5)
    assert "node2, node3" in job(cluster, nowhere)["AdminComment"]
    slurm(cluster, "scancel", str(nowhere))


def test_another_users_job_cannot_reach_a_gpus_mps_pipes_or_logs(cluster):
    """A client that reached another GPU's MPS pipes would make its control daemon retire the
    owner's server and start one of its own with default (uncapped) limits: the pipe and log
    directories of a GPU's MPS are open to the users with a slice on that GPU only."""
    victim = submit(cluster, "--gres=vgpu:30", user=VICTIM, script=(
        'echo "PIPE=$CUDA_MPS_PIPE_DIRECTORY LOG=$CUDA_MPS_LOG_DIRECTORY"; '
        'ls "$CUDA_MPS_PIPE_DIRECTORY" >/dev/null && echo own-pipes-reachable; sleep 30'))
    deadline, text = time.monotonic() + 90, ""
    while "own-pipes-reachable" not in text and time.monotonic() < deadline:
        time.sleep(0.5)
        path = cluster.dir / "out" / f"{victim}.out"
        text = path.read_text() if path.exists() else ""
    assert "own-pipes-reachable" in text, text
    pipe, log = (word.split("=", 1)[1] for word in text.split() if word.startswith(("PIPE=", "LOG=")))
    attacker = submit(cluster, "--gres=vgpu:20", user=ATTACKER, script=(
        f'ls {pipe} 2>&1; cat {log}/control.log 2>&1 | head -1; '
        f'CUDA_MPS_PIPE_DIRECTORY={pipe} CUDA_MPS_LOG_DIRECTORY={log} '
        f'python3 -c "import socket; s = socket.socket(socket.AF_UNIX); s.connect(\'{pipe}/control\')" 2>&1 | tail -1'))
    wait_for(cluster, [attacker])
    said = output(cluster, attacker)
    assert said.count("Permission denied") == 3, said
    slurm(cluster, "scancel", str(victim))
    wait_for(cluster, [victim])
