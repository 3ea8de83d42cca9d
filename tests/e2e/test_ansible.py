"""The Ansible rollout (ansible/site.yml) against a real local Slurm, the way an admin runs it.

A "site" slurm.conf without any slurm-vgpu piece is written; the playbook (connection local, every
path pointed under the test directory, services not managed: no systemd here) installs everything
on a controller, a GPU node and a login node. Then Slurm and the daemons start from what the
playbook installed (the agent's and placement's command read from their units and drop-ins), a second
run must change nothing, a third with a changed variable must reconfigure the live slurmctld
through the handler, and `sbatch --gres=vgpu:30` must complete with its slice.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest

from slurm_vgpu.adapters.gpus import SimulatedInventory
from slurm_vgpu.db import engine as db
from slurm_vgpu_dev import cluster as devcluster
from slurm_vgpu_dev.layout import load_layout
from slurm_vgpu.render import render

from ..conftest import SERVER_URL, have_slurm, slurm
from ..unit.test_ansible_lint import tool
from .jobs import output, submit, wait_for

pytestmark = pytest.mark.e2e

ANSIBLE_DIR = Path(__file__).resolve().parents[2] / "ansible"
PORT = int(os.environ.get("SLURM_VGPU_ANSIBLE_TEST_PORT", "20817"))
LAYOUT = '[[node]]\nname = "node1"\ncpus = 4\ngpus = { a100 = 2 }\n'
PUSHED = ("pyproject.toml", "README.md", "slurm_vgpu", "slurm_vgpu_dev", "systemd")  # the wheel's sources, the units
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)

# What a site has before slurm-vgpu: no GresTypes, no plugstack, no prolog, no GPU node lines (the
# playbook's vgpu-slurm.conf defines node1, with the address and hardware the inventory gives it).
SITE_SLURM_CONF = """\
ClusterName=vg-ansible
SlurmctldHost=ctld(127.0.0.1)
SlurmctldPort={port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge/munge.socket.2
StateSaveLocation={dir}/spool/ctld
SlurmctldPidFile={dir}/run/slurmctld.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdSpoolDir={dir}/spool/slurmd-%n
SlurmdPidFile={dir}/run/slurmd-%n.pid
SlurmdLogFile={dir}/log/slurmd-%n.log
SlurmdParameters=config_overrides
MpiDefault=none
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=900
InactiveLimit=0
KillWait=5
PartitionName=gpu Nodes=node1 Default=YES MaxTime=INFINITE State=UP
"""


class Site:
    """The test's hosts, database and Slurm, all under one directory."""

    def __init__(self, directory: Path):
        self.dir = directory
        token = uuid.uuid4().hex[:8]
        self.db_name = f"vg_ansible_{token}"
        self.logins = {c: f"vg_ansible_{token}_{c}" for c in ("placement", "agent", "node")}
        self.cluster = devcluster.Cluster(dir=directory, port=PORT, layout=directory / "layout.toml")
        self.prefix = directory / "hosts" / "shared"  # the controller and node1 share one prefix
        self.checkout = directory / "checkout"

    @property
    def etc(self) -> Path:
        return self.cluster.etc

    def prepare(self) -> None:
        for sub in ("etc", "log", "run", "spool/ctld", "inventory", "build"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "layout.toml").write_text(LAYOUT)
        (self.etc / "slurm.conf").write_text(
            SITE_SLURM_CONF.format(port=PORT, dir=self.dir))
        (self.etc / "cgroup.conf").write_text(render("cgroup.conf.j2", constrain_devices=True))
        for node in load_layout(self.dir / "layout.toml"):
            SimulatedInventory.write(self.dir / "inventory" / f"{node.name}.json", node.name, list(node.gpus))
            devcluster.make_gpu_device_nodes(self.cluster.device_dir, [g.minor for g in node.gpus])
        # What the playbook pushes: a snapshot of the checkout, so edits made to the working tree
        # while the test runs cannot show up as changes between runs.
        for name in PUSHED:
            source = ANSIBLE_DIR.parent / name
            if source.is_dir():
                shutil.copytree(source, self.checkout / name, symlinks=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.o", "*.so"))
            else:
                (self.checkout / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, self.checkout / name)
        (self.dir / "hosts.yml").write_text(json.dumps(self.inventory(), indent=2))

    def inventory(self) -> dict:
        d, prefix = self.dir, self.prefix
        passwords = {c: f"pw-{c}-{uuid.uuid4().hex[:6]}/#@:" for c in self.logins}
        common = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "ansible_become": False,
            "slurm_vgpu_prefix": str(prefix),
            "slurm_vgpu_build_dir": str(d / "build"),
            "slurm_vgpu_checkout": str(self.checkout),
            "slurm_vgpu_slurm_conf_dir": str(self.etc),
            "slurm_vgpu_spank_plugin": str(prefix / "lib" / "slurm_vgpu.so"),
            "slurm_vgpu_run_dir": str(d / "run" / "vgpu"),
            "slurm_vgpu_manage_services": False,
            "slurm_vgpu_systemd_dir": str(d / "systemd"),
            "slurm_vgpu_tmpfiles_dir": str(d / "tmpfiles.d"),
            "slurm_vgpu_gpu_inventory": str(d / "inventory" / "%n.json"),
            "slurm_vgpu_gpu_device_dir": str(self.cluster.device_dir),
            # the stand-in daemon is not part of what a site installs: it runs from this checkout
            "slurm_vgpu_mps_control": f"{sys.executable} -m slurm_vgpu_dev.fake_mps",
            "slurm_vgpu_conf_extra": {"MetricsPort": PORT + 1001},  # not the default 9835 others use
            "slurm_vgpu_slurm_node_params": {"node1": f"NodeAddr=127.0.0.1 Port={PORT + 1} CPUs=4 RealMemory=8192"},
            "slurm_vgpu_db_host": "127.0.0.1",
            "slurm_vgpu_db_port": db.database_url(SERVER_URL).port or 5432,
            "slurm_vgpu_db_name": self.db_name,
            "slurm_vgpu_db_admin_user": db.database_url(SERVER_URL).username,
            **{f"slurm_vgpu_db_{c}_user": name for c, name in self.logins.items()},
            **{f"slurm_vgpu_db_{c}_password": pw for c, pw in passwords.items()},
        }
        login = d / "hosts" / "login1"
        return {"all": {"vars": common, "children": {
            "slurm_vgpu_controller": {"hosts": {"ctld": {
                "slurm_vgpu_conf": str(d / "hosts" / "ctld-slurm-vgpu.conf")}}},
            "slurm_vgpu_gpu": {"hosts": {"node1": {"slurm_vgpu_node_name": "node1"}}},
            "slurm_vgpu_login": {"hosts": {"login1": {
                "slurm_vgpu_prefix": str(login), "slurm_vgpu_slurm_conf_dir": str(login / "etc"),
                "slurm_vgpu_spank_plugin": str(login / "lib" / "slurm_vgpu.so")}}},
        }}}

    def playbook(self, *extra: str) -> tuple[dict[str, dict[str, int]], str]:
        """Run site.yml; returns the recap per host and the whole output."""
        env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_STDOUT_CALLBACK": "default", "ANSIBLE_PIPELINING": "1",
               "ANSIBLE_LOCAL_TEMP": str(self.dir / "build" / "tmp"), **self.cluster.env()}
        result = subprocess.run(
            [tool("ansible-playbook"), "-i", str(self.dir / "hosts.yml"), "site.yml", *extra],
            cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=400,
        )
        text = result.stdout + result.stderr
        recap = {m[0]: {"ok": int(m[1]), "changed": int(m[2]), "unreachable": int(m[3]), "failed": int(m[4])}
                 for m in RECAP.findall(text)}
        assert result.returncode == 0 and set(recap) == {"ctld", "node1", "login1"}, text[-6000:]
        return recap, text

    def unit_command(self, unit: str) -> tuple[list[str], dict[str, str]]:
        """ExecStart and Environment of an installed unit, its drop-ins applied as systemd does
        (an empty ExecStart= resets the list)."""
        files = [self.dir / "systemd" / f"{unit}.service",
                 *sorted((self.dir / "systemd" / f"{unit}.service.d").glob("*.conf"))]
        exec_start, env = [], {}
        for line in "\n".join(f.read_text() for f in files).splitlines():
            key, _, value = line.partition("=")
            if key == "ExecStart":
                exec_start = [value] if value else []
            elif key == "Environment":
                name, _, val = value.partition("=")
                env[name] = val
        assert len(exec_start) == 1, f"{unit}: ExecStart={exec_start}"
        return shlex.split(exec_start[0]), env

    def start(self) -> None:
        """Start Slurm and the daemons the way the dev cluster does (no systemd as PID 1 here),
        each daemon from the command and environment its installed unit (and drop-in) gives it."""
        nodes = self.cluster.nodes()
        placement, placement_env = self.unit_command("slurm-vgpu-placement")
        agent, agent_env = self.unit_command("slurm-vgpu-agent")
        services = devcluster.slurm_services(self.cluster, nodes) + [
            devcluster.Service("placement", placement, env=placement_env),
            *(devcluster.Service(f"agent-{n.name}", agent, uts=n.name, env=agent_env) for n in nodes),
        ]
        try:
            devcluster.start_services(self.cluster, services, 60)
        except devcluster.ClusterError as exc:
            logs = "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                             for log in sorted((self.dir / "log").iterdir()))
            raise AssertionError(f"{exc}\n{logs}") from exc

    def admin(self) -> psycopg.Connection:
        url = db.database_url(SERVER_URL)
        return psycopg.connect(host=url.host, port=url.port or 5432, user=url.username, password=url.password,
                               dbname=self.db_name, autocommit=True)

    def destroy(self) -> None:
        devcluster.down(self.cluster)
        db.drop_database(db.database_url(SERVER_URL).set(database=self.db_name))
        url = db.database_url(SERVER_URL)
        with psycopg.connect(host=url.host, port=url.port or 5432, user=url.username, password=url.password,
                             dbname=url.database or "postgres", autocommit=True) as conn:
            for name in self.logins.values():
                conn.execute(f'DROP ROLE IF EXISTS "{name}"')
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def site():
    if not have_slurm():
        pytest.fail("Slurm is not installed: run the README's test command, which installs it")
    directory = Path(tempfile.mkdtemp(prefix="vg-ansible-", dir="/var/tmp"))
    directory.chmod(0o755)  # job users read slurm.conf
    site = Site(directory)
    site.prepare()
    try:
        site.first = site.playbook()
        print("first run:", site.first[0])
        site.start()
        site.second = site.playbook()
        print("second run:", site.second[0])
        yield site
    finally:
        site.destroy()


def test_first_run_installs_every_piece_where_slurm_and_the_daemons_find_it(site):
    recap, _ = site.first
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in recap.values())
    assert all(r["changed"] > 0 for r in recap.values()), recap
    etc = site.etc
    assert f"Include {etc}/vgpu-slurm.conf" in (etc / "slurm.conf").read_text()
    assert (f"NodeName=node1 NodeAddr=127.0.0.1 Port={PORT + 1} CPUs=4 RealMemory=8192 "
            "Gres=gpu:a100_0:1,vgpu:a100_0:100,gpu:a100_1:1,vgpu:a100_1:100 State=UNKNOWN") in (etc / "vgpu-slurm.conf").read_text()
    assert f"required {site.prefix}/lib/slurm_vgpu.so slice_dir={site.dir}/run/vgpu/jobs" in \
        (etc / "plugstack.conf.d" / "slurm-vgpu.conf").read_text()
    assert f"{site.prefix}/venv/bin/python -m slurm_vgpu.node prolog --config {etc}/slurm-vgpu.conf" in \
        (etc / "prolog.d" / "50-slurm-vgpu").read_text()
    login = site.dir / "hosts" / "login1"
    assert (login / "lib" / "slurm_vgpu.so").exists()
    assert "slurm_vgpu.so" in (login / "etc" / "plugstack.conf.d" / "slurm-vgpu.conf").read_text()


def test_every_host_runs_slurm_vgpu_installed_from_the_wheel_built_from_the_checkout(site):
    for prefix in (site.prefix, site.dir / "hosts" / "login1"):
        wheels = list((prefix / "share" / "dist").glob("slurm_vgpu-*.whl"))
        assert len(wheels) == 1, wheels
        located = subprocess.run([str(prefix / "venv" / "bin" / "python"), "-c",
                                  "import slurm_vgpu.resources as r; print(r.SPANK)"],
                                 capture_output=True, text=True, cwd=site.dir, env={"PATH": "/usr/bin:/bin"})
        assert located.stdout.strip().startswith(f"{prefix}/venv/lib/"), located  # not the checkout, not editable
        assert not (prefix / "src").exists()  # no source tree is pushed any more


def test_each_component_connects_with_its_own_login_and_root_only_files(site):
    node_conf = (site.etc / "slurm-vgpu.conf").read_text()
    agent_conf = (site.etc / "slurm-vgpu-agent.conf").read_text()
    ctld_conf = (site.dir / "hosts" / "ctld-slurm-vgpu.conf").read_text()
    for text, component in ((node_conf, "node"), (agent_conf, "agent"), (ctld_conf, "placement")):
        assert f"DatabaseUrl=postgresql+psycopg://{site.logins[component]}:" in text
    assert (site.etc / "slurm-vgpu-agent.conf").stat().st_mode & 0o777 == 0o600
    assert (site.etc / "slurm-vgpu.conf").stat().st_mode & 0o777 == 0o600
    with site.admin() as conn:
        rows = conn.execute(
            "SELECT u.rolname, u.rolcanlogin, u.rolsuper, array_agg(g.rolname) FROM pg_roles u "
            "JOIN pg_auth_members m ON m.member = u.oid JOIN pg_roles g ON g.oid = m.roleid "
            "WHERE u.rolname = ANY(%s) GROUP BY 1, 2, 3", (list(site.logins.values()),)).fetchall()
        mapped = dict(conn.execute("SELECT login, node FROM node_logins").fetchall())
    assert {r[0]: (r[1], r[2], r[3]) for r in rows} == {
        name: (True, False, [f"slurm_vgpu_{component}"]) for component, name in site.logins.items()}
    # the GPU node's logins write node1's rows only; the placement daemon's is not a node's
    assert mapped == {site.logins["agent"]: "node1", site.logins["node"]: "node1"}


def test_second_run_changes_nothing(site):
    recap, text = site.second
    assert {h: r["changed"] for h, r in recap.items()} == {"ctld": 0, "node1": 0, "login1": 0}, text[-4000:]
    assert all(r["failed"] == 0 for r in recap.values())


def test_a_changed_variable_reconfigures_the_live_slurmctld(site):
    recap, text = site.playbook("-e", json.dumps({"slurm_vgpu_operator_uids": [0, 4242]}))
    assert recap["ctld"]["changed"] > 0 and recap["login1"]["changed"] == 0, text[-6000:]
    assert "[4242] = true" in (site.etc / "job_submit.lua").read_text()
    handler = text.split("RUNNING HANDLER [slurm_vgpu : Run scontrol reconfigure]", 1)
    assert len(handler) == 2 and re.match(r"\s*\**\s*changed: \[", handler[1]), text[-4000:]
    devcluster.wait_idle(site.cluster, 60)


def test_a_vgpu_job_completes_with_its_slice_on_what_the_playbook_installed(site):
    job = submit(site.cluster, "--gres=vgpu:30", script="env | grep '^CUDA_' | sort")
    state = wait_for(site.cluster, [job], timeout=120)[job]
    assert state["JobState"] == "COMPLETED", state
    env = dict(line.split("=", 1) for line in output(site.cluster, job).split())
    gpus = {g.uuid for g in SimulatedInventory(site.dir / "inventory" / "node1.json").gpus()}
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "30"
    assert env["CUDA_VISIBLE_DEVICES"] in gpus
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == f"{site.dir}/run/vgpu/mps/{env['CUDA_VISIBLE_DEVICES']}/pipe"
    with site.admin() as conn:
        row = conn.execute("SELECT state, share, started_at IS NOT NULL FROM placements WHERE job_id = %s",
                           (job,)).fetchone()
    assert row == ("released", 30, True)  # placed, started by the prolog, released by the epilog
    assert "vgpu:a100_" in slurm(site.cluster, "scontrol", "show", "job", str(job)).stdout
