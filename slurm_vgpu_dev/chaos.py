"""Chaos on a dev cluster: vgpu jobs of several users and classes while the placement daemon, a node
agent, slurmctld and the database go down and come back at random; then what held.

What is checked, from three independent sources:
- Slurm: sampled while the run lasts, no GPU's vgpu GRES over 100 and no GPU running jobs of two
  users at once (``scontrol show node -d`` and ``squeue``);
- the slice files the prologs wrote: sampled likewise, no GPU with slices of two users;
- Postgres: every placement interval replayed at the end, no GPU over 100 or holding two users.
And per job: it completed with the slice it asked for (its output names that share, whatever
Slurm's accounting says: 22.05 counts a requeued job's first pin too), or ended with a reason
(``vgpu-state=failed`` with a ``wait=`` in its AdminComment), or is one Slurm itself lost or rolled
back: a SIGKILLed slurmctld comes back from the state it last saved, so a job submitted just before
is forgotten (and its id given to a later job; a placement of it is released, Slurm's record of the
id being gone), and one that ended just before is running again in its eyes. Those are reported
apart, by what the job's own output says: no slurm-vgpu component can bring back what slurmctld
forgot. What slurm-vgpu must do is let go of it: a forgotten job whose placement is still held when
the run ends is lost.

"Postgres down" closes the cluster's own database to every client and ends its connections (the
machine's server is shared with other clusters and cannot be stopped for one of them).
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from slurm_vgpu.adapters.slurm import drained, job_state
from slurm_vgpu.config import load
from slurm_vgpu.contract import SLO_CLASSES
from slurm_vgpu.db import engine as db

from . import cluster as devcluster

SHARES = (10, 20, 25, 30, 40, 50, 60, 75, 100)
# Printed by every chaos job, so that its output says which slice it ran with.
DONE = "ran to its end"  # a job's last line: it ran whole, whatever slurmctld remembers of it
SCRIPT = ('echo "share=${CUDA_MPS_ACTIVE_THREAD_PERCENTAGE:-none} gpu=${CUDA_VISIBLE_DEVICES:-none}"; '
          f'sleep {{sleep}}; echo "{DONE}"')
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED"}


@dataclass(frozen=True)
class Submission:
    job_id: int  # 0 where sbatch said it failed (slurmctld may still have made the job)
    name: str  # the job's name, unique to this submission: a job id may be given out twice
    options: str
    share: int  # the slice asked for, which the job's output must name
    out: Path  # the job's output file, its own too


@dataclass
class Report:
    jobs: int = 0
    completed_with_slice: int = 0
    ended_with_reason: int = 0
    ran_without_slice: list[int] = field(default_factory=list)
    ran_without_slice_why: list[str] = field(default_factory=list)  # its name, share asked, what it printed
    # sbatch said it failed (slurmctld killed before it answered), yet the job was made: judged as any
    made_though_refused: int = 0
    # Slurm knows it no more, and slurm-vgpu still holds a slice for it: a placement left behind
    lost: list[int] = field(default_factory=list)
    # Slurm forgot it (a slurmctld back from older state) and slurm-vgpu let go of it too
    lost_by_slurmctld: list[int] = field(default_factory=list)
    unfinished: list[int] = field(default_factory=list)
    # ran to their end with their slice, then a slurmctld killed before it saved so came back from
    # older state, where they had not ended (Slurm requeues them later, or holds them never runnable)
    # or did not exist (their id given to a later job)
    rolled_back: list[int] = field(default_factory=list)
    unfinished_why: list[str] = field(default_factory=list)  # state, Slurm's reason, the AdminComment's wait
    over_100: list[str] = field(default_factory=list)  # what each violation looked like
    user_mixes: list[str] = field(default_factory=list)
    samples: int = 0
    faults: Counter = field(default_factory=Counter)
    admin_resumes: int = 0  # nodes Slurm drained for a duplicate job id, resumed after the faults
    admin_releases: int = 0  # jobs Slurm held after launching them twice, released after the faults
    admin_restarts: int = 0  # slurmctld started with -i: it would not start on the state it had

    @property
    def held(self) -> bool:
        return not (self.ran_without_slice or self.lost or self.unfinished or self.over_100 or self.user_mixes)

    def lines(self) -> list[str]:
        return [
            f"jobs {self.jobs} ({self.made_though_refused} made though sbatch said it failed): "
            f"{self.completed_with_slice} completed with their slice, "
            f"{self.ended_with_reason} ended with a reason, {len(self.unfinished)} unfinished",
            f"faults: {', '.join(f'{k} x{v}' for k, v in sorted(self.faults.items())) or 'none'}; then, as an "
            f"admin would, {self.admin_resumes} node(s) resumed that Slurm drained for a duplicate job id, "
            f"{self.admin_releases} job(s) released that it held after launching them twice or duplicate ids, "
            f"{self.admin_restarts} slurmctld start(s) with -i",
            f"samples {self.samples}: {len(self.over_100)} over 100, {len(self.user_mixes)} user mixes "
            "(Slurm, slice files, and the Postgres replay)",
            f"ran without their slice: {len(self.ran_without_slice)} {self.ran_without_slice[:10]}",
            *(f"ran without its slice: {why}" for why in self.ran_without_slice_why[:10]),
            f"lost with a slice still held: {len(self.lost)} {self.lost[:10]}; forgotten by slurmctld: "
            f"{len(self.lost_by_slurmctld)} {self.lost_by_slurmctld[:10]}; ran to their end with their slice, "
            f"then rolled back by a restarted slurmctld: {len(self.rolled_back)} {self.rolled_back[:10]}",
            *(f"unfinished: {why}" for why in self.unfinished_why[:10]),
        ]


class Chaos:
    """One run on a cluster that is up (its services recorded in its state file)."""

    def __init__(self, cluster: devcluster.Cluster, users: list[str], seed: int = 0):
        self.cluster = cluster
        self.users = users
        self.rng = random.Random(seed)
        self.seed = seed
        self.report = Report()
        self.stop = threading.Event()  # the run is over: stop watching
        self.faults_over = threading.Event()
        self.config = load(cluster.vgpu_conf)
        self.engine = db.make_engine(cluster.database_url)
        self.out = cluster.dir / "chaos"
        self.out.mkdir(exist_ok=True)
        self.out.chmod(0o1777)
        self.held_since: dict[int, float] = {}  # job id -> when the run first saw Slurm hold it after a launch
        self.submitted: list[Submission] = []  # every sbatch, in order; a forgetful slurmctld gives ids out again

    # --- Slurm, as root or as a user ---------------------------------------------------------------

    def slurm(self, *argv: str, user: str | None = None, check: bool = False) -> subprocess.CompletedProcess:
        env = {**os.environ, **self.cluster.env()}
        if user:
            argv = ("runuser", "-u", user, "--", "env", f"SLURM_CONF={self.cluster.slurm_conf}", *argv)
        return subprocess.run(argv, env=env, capture_output=True, text=True, check=check, cwd="/tmp", timeout=60)

    def submit(self, count: int, spread_s: float) -> None:
        """``count`` jobs that sbatch accepted; each try has its own name and output file, a refused
        one too: slurmctld may have made the job and been killed before it answered."""
        accepted = 0
        while accepted < count:
            if self.stop.is_set():
                return
            share, klass = self.rng.choice(SHARES), self.rng.choice(SLO_CLASSES)
            model = self.rng.choice(["", "", "h100:", "a100:", "t4:"])
            options = [f"--gres=vgpu:{model}{share}", f"--vgpu-class={klass}"]
            script = SCRIPT.replace("{sleep}", str(self.rng.choice([0, 1, 2, 3])))
            name = f"chaos-{len(self.submitted)}"
            out = self.out / f"{len(self.submitted)}.out"  # not %j: a reused id is another user's file
            # appended to: a relaunch by a slurmctld that rolled back does not wipe what the first run said
            result = self.slurm("sbatch", "--parsable", f"--job-name={name}", f"--output={out}",
                                "--open-mode=append", *options, "--wrap", script, user=self.rng.choice(self.users))
            job_id = int(result.stdout.strip().split(";")[0]) if result.returncode == 0 else 0
            self.submitted.append(Submission(job_id, name, " ".join(options), share, out))
            if job_id:
                accepted += 1
            else:  # slurmctld down this moment: a user would try again
                time.sleep(0.5)
            time.sleep(self.rng.uniform(0, 2 * spread_s))

    # --- faults ------------------------------------------------------------------------------------

    def kill(self, service: str) -> None:
        state = devcluster._read_state(self.cluster) or {"services": {}}
        entry = state["services"].get(service)
        if entry:
            try:
                os.kill(entry["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(self.rng.uniform(0.2, 2.0))
        if service != "slurmctld":
            devcluster.restart(self.cluster, service)
            return
        try:
            devcluster.restart(self.cluster, service)
            time.sleep(2)  # a slurmctld that will not start on its state exits within this
            entry = (devcluster._read_state(self.cluster) or {"services": {}})["services"]["slurmctld"]
            if not devcluster._alive(entry):
                raise devcluster.ClusterError("slurmctld exited at start")
        except devcluster.ClusterError:
            self.start_ignoring_state_errors()
        devcluster._wait_ctld(self.cluster, 60)

    def start_ignoring_state_errors(self) -> None:
        """Killed before it first saved its associations' usage (within a minute of its start),
        26.05's slurmctld will not start again: "fatal: No Assoc usage file (.../assoc_usage) to
        recover". An admin then starts it with -i (state errors ignored), and so does the run,
        counting it. Any other reason to fail is the run's failure."""
        log = (self.cluster.dir / "log" / "slurmctld.log").read_text()[-2000:]
        if "No Assoc usage file" not in log:
            raise devcluster.ClusterError(f"slurmctld did not start again: {log.splitlines()[-1:]}")
        devcluster.restart(self.cluster, "slurmctld", ["-i"])
        self.report.admin_restarts += 1

    def database_outage(self) -> None:
        allow_connections(self.cluster.database_url, False)
        try:
            time.sleep(self.rng.uniform(2, 6))
        finally:
            allow_connections(self.cluster.database_url, True)

    def inject(self, every_s: float) -> None:
        agents = [name for name in (devcluster._read_state(self.cluster) or {"services": {}})["services"]
                  if name.startswith("agent-")]
        faults = {"placement": lambda: self.kill("placement"), "slurmctld": lambda: self.kill("slurmctld"),
                  "postgres": self.database_outage}
        for agent in agents:
            faults[agent] = lambda agent=agent: self.kill(agent)
        # Its own generator (the submitting thread draws from self.rng at times of its own), and
        # every kind once per round in a shuffled order: a run draws each kind of fault whatever the
        # timing of the two threads.
        rng = random.Random(f"faults-{self.seed}")
        order: list[str] = []
        while not self.faults_over.wait(rng.uniform(0.5, 1.5) * every_s):
            if not order:
                order = rng.sample(sorted(faults), len(faults))
            name = order.pop()
            faults[name]()
            self.report.faults[name.split("-")[0]] += 1

    # --- what holds while it runs ------------------------------------------------------------------

    def sample(self) -> None:
        text = self.slurm("scontrol", "show", "node", "-d").stdout
        for block in text.split("\n\n"):
            node = re.search(r"NodeName=(\S+)", block)
            used = re.search(r"GresUsed=(\S+)", block)
            if node and used:
                for kind, count in re.findall(r"vgpu:(\w+):(\d+)", used.group(1)):
                    if int(count) > 100:
                        self.report.over_100.append(f"Slurm: {node.group(1)} {kind} {count}")
        users = defaultdict(set)
        running = self.slurm("squeue", "-h", "-t", "RUNNING,COMPLETING", "-o", "%N|%u|%b").stdout
        for line in running.splitlines():
            node, user, tres = line.split("|")
            kind = re.search(r"vgpu:(\w+):\d+", tres)
            if kind:
                users[(node, kind.group(1))].add(user)
        for gpu, who in users.items():
            if len(who) > 1:
                self.report.user_mixes.append(f"Slurm: {gpu} runs jobs of {sorted(who)}")
        slices = defaultdict(set)
        owners = self.job_users()  # a slice file is root's; its job's user is Slurm's to say
        for path in self.config.slice_dir.glob("[0-9]*"):
            try:
                gpu = re.search(r"^CUDA_VISIBLE_DEVICES=(\S+)", path.read_text(), re.M)
            except OSError:
                continue
            if gpu and int(path.name) in owners:
                slices[gpu.group(1)].add(owners[int(path.name)])
        for gpu, who in slices.items():
            if len(who) > 1:
                self.report.user_mixes.append(f"slice files: {gpu} has slices of {sorted(who)}")
        self.report.samples += 1

    def watch(self, every_s: float) -> None:
        while not self.stop.wait(every_s):
            try:
                self.sample()
            except (subprocess.TimeoutExpired, OSError):
                continue

    def job_users(self) -> dict[int, str]:
        out = self.slurm("squeue", "-h", "-t", "RUNNING,COMPLETING", "-o", "%i|%u").stdout
        return {int(i): u for i, u in (line.split("|") for line in out.splitlines() if "|" in line)}

    # --- the run ------------------------------------------------------------------------------------

    def run(self, jobs: int, submit_over_s: float, fault_every_s: float, timeout_s: float) -> Report:
        """Faults while the jobs are submitted; then, faults over, wait for every job to end, still
        watching, and doing what an admin would after a slurmctld that lost its state: resume the
        nodes Slurm drains for a duplicate job id (it may find one minutes later, when it starts a
        rolled-back job again) and release the jobs it held after launching them twice."""
        faults = threading.Thread(target=self.inject, args=(fault_every_s,), daemon=True)
        watcher = threading.Thread(target=self.watch, args=(0.5,), daemon=True)
        faults.start()
        watcher.start()
        try:
            self.submit(jobs, submit_over_s / max(jobs, 1))
        finally:
            self.faults_over.set()
            faults.join(timeout=120)
            allow_connections(self.cluster.database_url, True)
        try:
            devcluster._wait_ctld(self.cluster, 60)
            self.wait_ended(timeout_s)
        finally:
            self.stop.set()
            watcher.join(timeout=120)
        self.judge()
        self.engine.dispose()
        return self.report

    def resume_duplicate_drains(self) -> None:
        """A slurmctld killed before it saved an allocation starts that job a second time on its
        node; the node's slurmd refuses ("Job N already running") and slurmctld drains the node with
        "Duplicate jobid". That drain is Slurm's own, left to an admin: the run does the admin's
        part while it waits for the jobs, and counts it."""
        out = self.slurm("sinfo", "--noheader", "--Node", "--format=%N|%t|%E").stdout
        for line in out.splitlines():
            node, state, reason = line.split("|", 2)
            if drained(state) and reason.startswith("Duplicate jobid"):
                self.slurm("scontrol", "update", f"NodeName={node}", "State=RESUME")
                self.report.admin_resumes += 1

    def release_duplicate_launches(self) -> None:
        """A slurmctld that came back from older state launches a job that already runs a second
        time; slurmd refuses ("Job N already running, do not launch second copy"), and slurmctld
        requeues the job held (``launch failed requeued held``) beside draining the node; in that
        fallout it has also left jobs held as if by their user (``JobHeldUser``), which no user of
        the run does and no slurm-vgpu component does either (its requeues read "job requeued in
        held state" until released). Only an admin releases them: the node agent releases only the
        jobs whose prolog it saw fail for want of the database, within seconds of its return. The
        run does the admin's part for a job held so for ADMIN_DELAY_S, so that the agent's own
        releases are not done for it, and counts it."""
        out = self.slurm("squeue", "--noheader", "--states=PENDING", "--format=%i|%r").stdout
        held = {int(i) for i, _, r in (line.partition("|") for line in out.splitlines())
                if r.strip() in SLURM_HOLDS and i.strip().isdigit()}
        now = time.monotonic()
        for job_id in held:
            since = self.held_since.setdefault(job_id, now)
            if now - since >= ADMIN_DELAY_S and self.slurm("scontrol", "release", str(job_id)).returncode == 0:
                self.report.admin_releases += 1
                del self.held_since[job_id]

    def slurm_jobs(self) -> dict[str, dict]:
        """What slurmctld knows of the run's jobs, by name: a job id it gave out twice names two jobs."""
        result = self.slurm("squeue", "--json", "--states=all")  # 23.02+ drop ended jobs without it
        if result.returncode != 0:
            return {}
        names = {s.name for s in self.submitted}
        return {j["name"]: j for j in json.loads(result.stdout)["jobs"] if j["name"] in names}

    def accounted(self, names) -> dict[str, dict]:
        """Slurm's accounting record of the jobs of ``names`` that ended, in ``squeue --json``'s keys:
        slurmctld forgets an ended job MinJobAge after its end (15 minutes in the dev cluster), which a
        long run outlives, and its accounting keeps it. A job accounted as not ended is left out: only
        slurmctld can say it still waits or runs."""
        if not names:
            return {}
        result = self.slurm("sacct", "-X", "-n", "-P", f"--delimiter={SACCT_SEPARATOR}", "-a",
                            f"--name={','.join(sorted(names))}", "-S", "now-1days",
                            "-o", "JobIDRaw,JobName,State,NodeList,AdminComment")
        found = {}
        for line in result.stdout.splitlines():  # oldest first: a requeued job's last record wins
            fields = line.split(SACCT_SEPARATOR)
            if len(fields) != 5 or not fields[0].isdigit() or fields[1] not in names:
                continue
            job_id, name, state, nodes, comment = fields
            found[name] = {"job_id": int(job_id), "name": name, "job_state": state.split()[0], "state_reason": "",
                           "nodes": nodes, "admin_comment": comment}
        return {name: job for name, job in found.items() if _state(job) in ENDED}

    def placements(self) -> list:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(
                "SELECT id, job_id, gpu_uuid, uid, share, placed_at, coalesce(ended_at, now()) AS ended_at, "
                "ended_at IS NULL AS live FROM placements")).all()

    def wait_ended(self, timeout_s: float) -> None:
        """Until every job Slurm knows has ended (faults go on meanwhile), or the timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.resume_duplicate_drains()
            self.release_duplicate_launches()
            known = self.slurm_jobs()
            if known and all(_state(j) in ENDED for j in known.values()):
                return
            time.sleep(2)

    def judge(self) -> None:
        """Each job by its name, never by its id alone: a slurmctld back from older state gives a
        forgotten job's id to the next submission."""
        devcluster._wait_ctld(self.cluster, 60)
        known = self.slurm_jobs()
        known.update(self.accounted({s.name for s in self.submitted} - set(known)))
        live_ids = {job["job_id"] for job in known.values() if _state(job) not in ENDED}
        rows = self.placements()
        deadline = time.monotonic() + FORGOTTEN_RELEASE_S
        while {r.job_id for r in rows if r.live} - live_ids and time.monotonic() < deadline:
            time.sleep(2)  # a placement of a job Slurm forgot is released by a cycle or the agent
            rows = self.placements()
        self.count(known, {r.job_id for r in rows if r.live} - live_ids)
        self.report.over_100 += [f"Postgres: {v}" for v in replay(rows, "over")]
        self.report.user_mixes += [f"Postgres: {v}" for v in replay(rows, "users")]

    def count(self, known: dict[str, dict], held: set[int]) -> None:
        """Each submission into the report, from Slurm's record of it by name (``known``), what its
        output printed, and the job ids of the placements still held though Slurm runs no such job."""
        for submission in self.submitted:
            job, out = known.get(submission.name), submission.out
            if not submission.job_id and job is None:
                continue  # refused, and slurmctld has no such job: never made
            self.report.jobs += 1
            self.report.made_though_refused += not submission.job_id
            job_id = job["job_id"] if job else submission.job_id
            printed = out.read_text() if out.exists() else ""
            ran_whole = DONE in printed and re.search(r"share=\d+ ", printed) is not None
            if job is None:  # forgotten (its id maybe given out again)
                if job_id in held:
                    self.report.lost.append(job_id)
                else:
                    (self.report.rolled_back if ran_whole else self.report.lost_by_slurmctld).append(job_id)
                continue
            state, comment = _state(job), job.get("admin_comment") or ""
            why = f"{job_id} {state} {job.get('state_reason', '')} {job.get('nodes') or ''} {comment}".strip()
            if state != "COMPLETED" and ran_whole:  # and slurmctld, rolled back, started it again or keeps it
                self.report.rolled_back.append(job_id)
            elif state not in ENDED:
                self.report.unfinished.append(job_id)
                self.report.unfinished_why.append(why)
            elif state == "COMPLETED":
                if f"share={submission.share} " in printed:
                    self.report.completed_with_slice += 1
                else:
                    self.report.ran_without_slice.append(job_id)
                    self.report.ran_without_slice_why.append(
                        f"{job_id} {submission.name} asked {submission.options}, printed {printed.strip()[-200:]!r}")
            elif "wait=" in comment or "agent=" in comment or state in ("NODE_FAIL", "CANCELLED"):
                self.report.ended_with_reason += 1
            else:  # ended with no reason a user can read
                self.report.unfinished.append(job_id)
                self.report.unfinished_why.append(why)


FORGOTTEN_RELEASE_S = 60.0  # how long the judge gives slurm-vgpu to release the placement of a job Slurm forgot
# Slurm's reasons for a job it held after a failed launch, or after duplicate job ids
SLURM_HOLDS = ("launch failed requeued held", "JobHeldUser")
ADMIN_DELAY_S = 120.0  # how long a held job waits for the node agent before the run releases it as an admin
SACCT_SEPARATOR = "^^"  # between sacct's fields: an AdminComment may hold "|"


def _state(job: dict) -> str:
    return job_state(job.get("job_state"))


def replay(rows, check: str) -> list[str]:
    """Every placement interval in time order: where a GPU held over 100 units (``over``) or two
    users (``users``) at one instant. Rows have ``id, gpu_uuid, uid, share, placed_at, ended_at``."""
    found = []
    by_gpu = defaultdict(list)
    for r in rows:
        by_gpu[r.gpu_uuid] += [(r.placed_at, 1, r), (r.ended_at, 0, r)]
    for gpu, events in by_gpu.items():
        live = {}
        for at, starting, r in sorted(events, key=lambda e: (e[0], e[1])):
            if not starting:
                live.pop(r.id, None)
                continue
            live[r.id] = r
            if check == "over" and sum(p.share for p in live.values()) > 100:
                found.append(f"{gpu} at {at}: {sum(p.share for p in live.values())} units")
            if check == "users" and len({p.uid for p in live.values()}) > 1:
                found.append(f"{gpu} at {at}: uids {sorted({p.uid for p in live.values()})}")
    return found


def allow_connections(url: str, allowed: bool) -> None:
    """Open or close a database to every client; closing also ends the connections it has."""
    target = db.database_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{target.database}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}'))
            if not allowed:
                conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                             {"d": target.database})
    finally:
        admin.dispose()


def ensure_users(count: int, prefix: str = "vgpu-chaos") -> list[str]:
    """Local Unix users for the jobs (created once, kept)."""
    names = [f"{prefix}{i}" for i in range(count)]
    for name in names:
        if subprocess.run(["id", "-u", name], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True)
    return names
