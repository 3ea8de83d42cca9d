"""A real Slurm cluster on one machine: munge, slurmctld and one slurmd per node, each node in its own
UTS namespace (own hostname) with its own port and spool directory.

On a release that runs cgroup v2 (24.11 and later, see ``releases``), each node also gets its own
mount and cgroup namespace, rooted at a cgroup of its own in the machine's unified hierarchy and with
that hierarchy mounted at /sys/fs/cgroup; the node's agent enters them. docs/slurm-releases.md.

Every process started is recorded (PID, UTS namespace) in ``state.json`` under the cluster directory
and stopped by PID on ``down``; processes of ours that live in a node's namespace (slurmstepd, job
steps) are stopped with it. Nothing else on the machine is touched.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from slurm_vgpu import config, render
from slurm_vgpu.adapters.gpus import SimulatedInventory
from slurm_vgpu.config import Config
from slurm_vgpu.render import NodeSpec
from slurm_vgpu.node.hooks import hook_script
from slurm_vgpu.node.slice import NVIDIA_MAJOR
from slurm_vgpu.spank_build import PLUGIN, SpankBuildError, build_plugin
from . import accounting, releases
from .layout import DEFAULT_LAYOUT, load_layout

TEMPLATES = render.environment(Path(__file__).with_name("templates"))  # slurm.conf of a dev cluster
DEFAULT_DIR = Path(os.environ.get("SLURM_VGPU_DEV_DIR", "/var/tmp/slurm-vgpu-dev"))
DEFAULT_PORT = int(os.environ.get("SLURM_VGPU_DEV_PORT", "16817"))


class ClusterError(RuntimeError):
    pass


@dataclass
class Cluster:
    """Paths and settings of one dev cluster; ``dir`` holds everything it writes."""

    dir: Path = DEFAULT_DIR
    port: int = DEFAULT_PORT
    layout: Path = DEFAULT_LAYOUT
    database_url: str | None = None
    release: str = releases.DEFAULT  # the Slurm it runs: releases.RELEASES
    # Hooks of the rest of the system: run after the configs are written, and services started
    # after Slurm's own daemons (placement daemon, node agents).
    before_start: list[Callable[[Cluster], None]] = field(default_factory=list)
    extra_services: list[Callable[[Cluster], list[Service]]] = field(default_factory=list)
    # Waits run once every service has started (until the agents have registered their GPUs, say),
    # each given the seconds it may take.
    after_start: list[Callable[[Cluster, float], None]] = field(default_factory=list)

    @property
    def etc(self) -> Path:
        return self.dir / "etc"

    @property
    def slurm_conf(self) -> Path:
        return self.etc / "slurm.conf"

    @property
    def vgpu_conf(self) -> Path:
        """The cluster's slurm-vgpu.conf, read by the placement daemon, agents, prolog and epilog."""
        return self.etc / "slurm-vgpu.conf"

    @property
    def munge_socket(self) -> Path:
        """The socket of the cluster's own munged (slurm.conf ``AuthInfo=socket=``)."""
        return self.dir / "munge" / "munge.socket.2"

    @property
    def device_dir(self) -> Path:
        """The simulated GPUs' device files (gres.conf File=)."""
        return self.dir / "dev"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def slurm(self) -> releases.Release:
        return releases.get(self.release)

    @property
    def cgroup_root(self) -> Path | None:
        """On cgroup v2 releases, the cluster's own cgroup in the machine's unified hierarchy; each
        node's namespace is rooted at ``<cgroup_root>/<node>``."""
        if self.slurm.cgroup != "v2":
            return None
        unified = unified_hierarchy()
        if unified is None:
            raise ClusterError(f"Slurm {self.release} runs its nodes on cgroup v2, and this machine mounts no "
                               "cgroup2 hierarchy (see /proc/self/mountinfo)")
        return unified / "slurm-vgpu-dev" / hashlib.sha256(str(self.dir).encode()).hexdigest()[:12]

    def inventory_file(self, node: str) -> Path:
        return self.dir / "inventory" / f"{node}.json"

    def nodes(self) -> list[NodeSpec]:
        return [
            NodeSpec(n.name, n.gpus, n.cpus, n.memory_mib, port=self.port + 1 + i, address="127.0.0.1",
                     features=n.features)
            for i, n in enumerate(load_layout(self.layout))
        ]

    def env(self) -> dict[str, str]:
        """What a shell (or a test) needs to talk to this cluster."""
        env = {"SLURM_CONF": str(self.slurm_conf), "SLURM_VGPU_CONF": str(self.vgpu_conf)}
        if self.slurm.bin_dir is not None:  # that release's sbatch, squeue, scontrol... first
            env["PATH"] = f"{self.slurm.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        if self.database_url:
            env["SLURM_VGPU_DATABASE_URL"] = self.database_url
        return env


@dataclass(frozen=True)
class Service:
    """A long-running process of the cluster; ``uts`` runs it in a new UTS namespace of that name,
    ``user`` under that account (both exec in place, so the recorded PID is the daemon's)."""

    name: str
    argv: list[str]
    uts: str | None = None
    user: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    # cgroup v2 nodes: the node's own cgroup; the service runs in new mount and cgroup namespaces
    # rooted there, with the unified hierarchy mounted at /sys/fs/cgroup
    cgroup: Path | None = None
    # run in the namespaces (UTS, mount, cgroup) of that service of the cluster (a node's slurmd)
    enter: str | None = None


def write_configs(cluster: Cluster, nodes: list[NodeSpec]) -> None:
    """Slurm's configs plus slurm-vgpu's node path: SPANK plugin (built and installed here), prolog/epilog
    wrappers, cgroup plugins with ConstrainDevices, and slurm-vgpu.conf with the fake MPS binary.

    Job users read slurm.conf and load the plugin from here, so the directory is world-readable."""
    cluster.dir.mkdir(parents=True, exist_ok=True)
    cluster.dir.chmod(0o755)
    for sub in ("etc/prolog.d", "etc/epilog.d", "log", "run", "spool/ctld", "inventory"):
        (cluster.dir / sub).mkdir(parents=True, exist_ok=True)
    plugstack = cluster.etc / "plugstack.conf"
    node_config = Config(
        database_url=cluster.database_url or Config.database_url,
        inventory=str(cluster.dir / "inventory" / "%n.json"),
        mps_control=f"{sys.executable} -m slurm_vgpu_dev.fake_mps --gpus {cluster.dir / 'inventory'}",
        run_dir=cluster.dir / "run" / "vgpu",
        slurm_conf=cluster.slurm_conf,
    )
    context = dict(
        cluster_name=accounting.CLUSTER_NAME,
        dir=str(cluster.dir),
        ctld_port=cluster.port,
        dbd_port=accounting.dbd_port(cluster),
        plugin_dir=str(cluster.slurm.plugin_dir or ""),
        munge_socket=str(cluster.munge_socket),
        nodes=nodes,
        proctrack="proctrack/cgroup",
        task_plugin="task/cgroup",
        plugstack_conf=str(plugstack),
        prolog=str(cluster.etc / "prolog.d" / "*"),
        epilog=str(cluster.etc / "epilog.d" / "*"),
    )
    files = {
        "slurm.conf": TEMPLATES.get_template("slurm.conf.j2").render(**context),
        "gres.conf": render.gres_conf(nodes, str(cluster.device_dir)),
        "job_submit.lua": render.job_submit_lua(nodes),
        "cgroup.conf": render.render("cgroup.conf.j2", constrain_devices=True, **_cgroup_settings(cluster)),
        "plugstack.conf": render.render(
            "plugstack.conf.j2", spank_plugin=str(install_spank_plugin(cluster)),
            spank_args=f"slice_dir={node_config.slice_dir}",
        ),
        cluster.vgpu_conf.name: config.render(node_config),
    }
    for name, text in files.items():
        (cluster.etc / name).write_text(text)
    for hook in ("prolog", "epilog"):
        wrapper = cluster.etc / f"{hook}.d" / "50-slurm-vgpu"
        wrapper.write_text(hook_script(hook, sys.executable, cluster.vgpu_conf))
        wrapper.chmod(0o755)
    for node in nodes:
        SimulatedInventory.write(cluster.inventory_file(node.name), node.name, list(node.gpus))
    make_gpu_device_nodes(cluster.device_dir, sorted({g.minor for n in nodes for g in n.gpus}))


def _cgroup_settings(cluster: Cluster) -> dict:
    if cluster.slurm.cgroup == "v1":
        return {}
    # The kernel's v2 hierarchy here has no controllers (the v1 hierarchies hold them): Slurm logs
    # "Controller cpu/cpuset/memory is not enabled!" and goes on; devices need none (a BPF program).
    return {"cgroup_plugin": "cgroup/v2", "ignore_systemd": True}


def unified_hierarchy(mountinfo: Path = Path("/proc/self/mountinfo")) -> Path | None:
    """Where this machine mounts its cgroup2 hierarchy (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a
    hybrid machine)."""
    for line in mountinfo.read_text().splitlines():
        fields = line.split()
        if " - cgroup2 " in line and fields[3] == "/":
            return Path(fields[4])
    return None


def make_gpu_device_nodes(directory: Path, minors: list[int]) -> None:
    """Character devices with NVIDIA's major, as the driver makes /dev/nvidia<minor>: gres.conf's
    File= lines name them, so Slurm's device cgroup fences the simulated GPUs as it would real
    ones. With no driver loaded, opening one fails ENXIO where the cgroup allows it and EPERM where
    it denies it."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    for minor in minors:
        path = directory / f"nvidia{minor}"
        if not path.exists():
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(NVIDIA_MAJOR, minor))
            path.chmod(0o666)


def install_spank_plugin(cluster: Cluster) -> Path:
    """Build the plugin in the cluster's ``build/spank`` (incremental), then install it into the
    cluster's own ``lib/``.

    sbatch loads the plugin as the submitting user, and a checkout may sit in a directory only root
    can read (``mktemp -d`` makes 0700 ones), so the plugin must not be loaded from the checkout.
    The copy replaces the file atomically: daemons that have the old one mapped keep it.
    """
    build = cluster.dir / "build" / ("spank" if cluster.slurm.rootfs is None else f"spank-{cluster.release}")
    try:
        built = build_plugin(build, cluster.slurm.include_dir)
    except SpankBuildError as exc:
        raise ClusterError(str(exc)) from exc
    installed = cluster.dir / "lib" / PLUGIN
    installed.parent.mkdir(mode=0o755, exist_ok=True)
    if not installed.exists() or installed.read_bytes() != built.read_bytes():
        staging = installed.with_suffix(".so.new")
        shutil.copyfile(built, staging)
        staging.chmod(0o755)
        os.replace(staging, installed)
    return installed


def slurm_services(cluster: Cluster, nodes: list[NodeSpec]) -> list[Service]:
    conf = str(cluster.slurm_conf)
    slurm = cluster.slurm
    services = [Service("slurmctld", [slurm.program("slurmctld"), "-D", "-f", conf], uts="ctld")]
    slurmd = [slurm.program("slurmd"), "-D", "-f", conf]
    env = {}
    if slurm.bin_dir is not None:
        slurmd += ["-d", slurm.program("slurmstepd")]  # not the slurmstepd compiled in (/usr/sbin's)
    root = cluster.cgroup_root
    if root is not None:
        env["LD_PRELOAD"] = str(build_cgroup2_view(cluster))
    services += [
        Service(f"slurmd-{n.name}", slurmd, uts=n.name, env=env, cgroup=root / n.name if root else None)
        for n in nodes
    ]
    return services


CGROUP2_VIEW = Path(__file__).with_name("cgroup2_view.c")


def build_cgroup2_view(cluster: Cluster) -> Path:
    """The LD_PRELOAD shim that gives a node's slurmd and slurmstepd a cgroup v2-only view of
    /proc/<pid>/cgroup (cgroup2_view.c), built with this machine's compiler into the cluster's build/."""
    built = cluster.dir / "build" / "cgroup2_view.so"
    if not built.exists() or built.stat().st_mtime < CGROUP2_VIEW.stat().st_mtime:
        built.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o", str(built),
                                 str(CGROUP2_VIEW), "-ldl"], capture_output=True, text=True)
        if result.returncode != 0:
            raise ClusterError(f"building {CGROUP2_VIEW.name} failed: {result.stderr.strip()}")
    return built


def all_services(cluster: Cluster, nodes: list[NodeSpec]) -> list[Service]:
    """Slurm's daemons first (slurmdbd before slurmctld), then the rest of the system, in start order."""
    services = [accounting.service(cluster), *slurm_services(cluster, nodes)]
    for extra in cluster.extra_services:
        services += extra(cluster)
    return services


def database_name(directory: Path) -> str:
    """Each dev cluster's own database, on the Postgres server (placements) and on the MariaDB one
    (Slurm's accounting), so two clusters on one machine never share state: ``slurm_vgpu_dev`` for
    the default directory, ``slurm_vgpu_dev_<hash of the directory>`` for any other. ``down`` leaves
    them (like the cluster's spool); dropping them is ``down --drop-database``."""
    if Path(directory).resolve() == DEFAULT_DIR.resolve():
        return "slurm_vgpu_dev"
    return f"slurm_vgpu_dev_{hashlib.sha256(str(Path(directory).resolve()).encode()).hexdigest()[:10]}"


def up(cluster: Cluster, timeout: float = 60.0) -> None:
    """Start the cluster and wait until every node is idle; harmless when it is already up.

    A start that fails stops whatever it had started, so a failed ``up`` leaves only logs behind.
    """
    state = _read_state(cluster)
    if state and state.get("complete") and all(_alive(s) for s in state["services"].values()):
        wait_idle(cluster, timeout)
        return
    if state:
        down(cluster)
    try:
        releases.ensure(cluster.slurm, log=lambda message: print(message, file=sys.stderr, flush=True))
    except releases.ReleaseError as exc:
        raise ClusterError(str(exc)) from exc
    nodes = cluster.nodes()
    write_configs(cluster, nodes)
    try:
        accounting.prepare(cluster, database_name(cluster.dir))
    except accounting.AccountingError as exc:
        raise ClusterError(str(exc)) from exc
    (cluster.dir / "release").write_text(cluster.release + "\n")
    for prepare in cluster.before_start:
        prepare(cluster)
    start_services(cluster, all_services(cluster, nodes), timeout)


def start_services(cluster: Cluster, services: list[Service], timeout: float) -> None:
    """Start the cluster's munged, then ``services`` in order, and wait until every node is idle;
    on failure stop whatever was started. Used by ``up`` and by tests that start Slurm from
    configuration installed some other way (the Ansible rollout), whose slurm.conf must name the
    cluster's socket: ``AuthInfo=socket=<Cluster.munge_socket>``."""
    started: dict[str, dict] = {}
    try:
        started["munged"] = _start_munge(cluster)
        _write_state(cluster, started)
        for service in services:
            started[service.name] = _start(cluster, service, started)
            _write_state(cluster, started)
            if service.name == "slurmctld":
                _wait_ctld(cluster, timeout)
            elif service.name == accounting.SERVICE:
                accounting.register(cluster, timeout)
        wait_idle(cluster, timeout)
        for ready in cluster.after_start:
            ready(cluster, timeout)
        _write_state(cluster, started, complete=True)
    except BaseException:
        down(cluster)
        raise


def down(cluster: Cluster) -> list[str]:
    """Stop everything this cluster started, by PID, newest first. Returns what was stopped."""
    state = _read_state(cluster)
    if not state:
        return []
    stopped = []
    for name, entry in reversed(list(state["services"].items())):
        if not _alive(entry):
            continue
        # A namespace is ours only while our daemon lives in it: a dead one's namespace number can
        # be reused by someone else's, so its leftovers (if any) are left alone rather than guessed.
        companions = _pids_in_uts_ns(_uts_ns(entry["pid"])) if entry.get("uts") else []
        _terminate(entry["pid"])
        for pid in companions:
            if pid != entry["pid"]:
                _terminate(pid)
        stopped.append(name)
    cluster.state_file.unlink(missing_ok=True)
    _remove_cgroups(state)
    return stopped


def _remove_cgroups(state: dict) -> None:
    """The node cgroups of a stopped cluster, deepest first; one that still holds a process stays."""
    for entry in state["services"].values():
        if entry.get("cgroup"):
            top = Path(entry["cgroup"])
            for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                _rmdir(directory)
            _rmdir(top)
            _rmdir(top.parent)


def _rmdir(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass


def recorded_release(directory: Path) -> str | None:
    """The release ``up`` last started in ``directory``, if any."""
    try:
        return (directory / "release").read_text().strip() or None
    except OSError:
        return None


def status(cluster: Cluster) -> dict[str, bool]:
    state = _read_state(cluster) or {"services": {}}
    return {name: _alive(entry) for name, entry in state["services"].items()}


def wait_idle(cluster: Cluster, timeout: float) -> None:
    """Wait until ``sinfo`` shows every node idle (or mixed/allocated, once jobs run)."""
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        result = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %t"],
            env={**os.environ, **cluster.env()}, capture_output=True, text=True,
        )
        seen = result.stdout.strip() or result.stderr.strip()
        states = dict(line.split() for line in result.stdout.splitlines() if line.strip())
        if states and set(states) == {n.name for n in cluster.nodes()} and all(
            s.rstrip("*~#") in ("idle", "mix", "alloc") for s in states.values()
        ):
            return
        time.sleep(0.5)
    raise ClusterError(
        f"nodes not idle after {timeout:.0f}s (sinfo: {seen!r}); see {cluster.dir}/log/slurmctld.log "
        f"and {cluster.dir}/log/slurmd-<node>.log"
    )


def _start_munge(cluster: Cluster) -> dict:
    """Start the cluster's own munged (the machine's key, a socket, PID, seed and log of the
    cluster's), as the munge user in the foreground mode we can stop by PID. A munged shared with
    other clusters or sessions would be stopped under them by whoever started it."""
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run(["mungekey", "--create"], check=True)
        shutil.chown(key, "munge", "munge")
    socket_dir = cluster.munge_socket.parent
    socket_dir.mkdir(mode=0o755, exist_ok=True)
    shutil.chown(socket_dir, "munge", "munge")
    argv = ["/usr/sbin/munged", "-F", f"--socket={cluster.munge_socket}", f"--pid-file={socket_dir}/munged.pid",
            f"--seed-file={socket_dir}/munged.seed", f"--log-file={socket_dir}/munged.log"]
    entry = _start(cluster, Service("munged", argv, user="munge"))
    deadline = time.monotonic() + 10
    while not munge_works(cluster.munge_socket):
        if time.monotonic() > deadline:
            raise ClusterError(f"munged did not come up; see {socket_dir}/munged.log")
        time.sleep(0.1)
    return entry


def munge_works(socket: Path) -> bool:
    encode = subprocess.run(["munge", "-n", "-S", str(socket)], capture_output=True)
    if encode.returncode != 0:
        return False
    return subprocess.run(["unmunge", "-S", str(socket)], input=encode.stdout, capture_output=True).returncode == 0


# A cgroup v2 node: join the node's cgroup, then new mount and cgroup namespaces rooted there, where
# the unified hierarchy replaces the v1 mounts at /sys/fs/cgroup (nothing outside the node sees it).
_NODE_NAMESPACES = ('mkdir -p "$1" && echo $$ > "$1/cgroup.procs" && shift && '
                    'exec unshare --mount --cgroup --uts --propagation private -- sh -c {inner} "$@"').format(
    inner=shlex.quote('umount -l /sys/fs/cgroup 2>/dev/null; mount -t cgroup2 none /sys/fs/cgroup && '
                      'hostname "$0" && exec "$@"'))


def _start(cluster: Cluster, service: Service, started: dict | None = None) -> dict:
    argv = service.argv
    if service.user:
        argv = ["setpriv", f"--reuid={service.user}", f"--regid={service.user}", "--init-groups", *argv]
    if service.enter:
        host = (started or {}).get(service.enter)
        if host is None:
            raise ClusterError(f"{service.name} enters the namespaces of {service.enter}, which is not running")
        argv = ["nsenter", f"--target={host['pid']}", "--mount", "--cgroup", "--uts", "--", *argv]
    elif service.cgroup:
        # sh, unshare and sh exec in place, so the PID we record is the daemon's own PID.
        argv = ["sh", "-c", _NODE_NAMESPACES, "sh", str(service.cgroup), service.uts or service.name, *argv]
    elif service.uts:
        # unshare execs in place (no --fork), so the PID we record is the daemon's own PID.
        argv = ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', service.uts, *argv]
    log = open(cluster.dir / "log" / f"{service.name}.out", "ab")
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, **cluster.env(), **service.env}, start_new_session=True, close_fds=True,
    )
    log.close()
    entry = {"pid": process.pid, "argv": service.argv, "started": time.time()}
    if service.uts and not service.enter:  # a service that entered a node's namespaces leaves them to its owner
        entry["uts"] = service.uts
    if service.cgroup:
        entry["cgroup"] = str(service.cgroup)
    time.sleep(0.2)
    if process.poll() is not None:
        raise ClusterError(
            f"{service.name} exited at start (code {process.returncode}); see "
            f"{cluster.dir}/log/{service.name}.out and {cluster.dir}/log/"
        )
    return entry


def _uts_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/uts")
    except OSError:
        return None


def _wait_ctld(cluster: Cluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ping = subprocess.run(
            ["scontrol", "ping"], env={**os.environ, **cluster.env()}, capture_output=True, text=True
        )
        if "UP" in ping.stdout:
            return
        time.sleep(0.3)
    raise ClusterError(f"slurmctld not answering after {timeout:.0f}s; see {cluster.dir}/log/slurmctld.log")


def _alive(entry: dict) -> bool:
    """True when the recorded PID still runs the program we started (not a reused PID)."""
    try:
        cmdline = Path(f"/proc/{entry['pid']}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    program = os.path.basename(entry["argv"][0]).encode()
    return any(os.path.basename(part) == program for part in cmdline if part)


def _pids_in_uts_ns(ns: str | None) -> list[int]:
    if ns is None or ns == _uts_ns(os.getpid()):
        return []  # never sweep the machine's own namespace
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.readlink(proc / "ns" / "uts") == ns:
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def _terminate(pid: int, grace: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        _reap(pid)
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _read_state(cluster: Cluster) -> dict | None:
    try:
        return json.loads(cluster.state_file.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _write_state(cluster: Cluster, services: dict, complete: bool = False) -> None:
    cluster.state_file.write_text(json.dumps({"services": services, "complete": complete}, indent=2) + "\n")





def restart(cluster: Cluster, name: str, extra_args: Sequence[str] = ()) -> int:
    """Start one service again (after a crash, or a test's SIGKILL), with ``extra_args`` after its
    own; returns its new PID."""
    state = _read_state(cluster)
    if state is None:
        raise ClusterError(f"no cluster is up in {cluster.dir}")
    services = all_services(cluster, cluster.nodes())
    service = next((s for s in services if s.name == name), None)
    if service is None:
        raise ClusterError(f"{name!r} is not a service of this cluster: {', '.join(s.name for s in services)}")
    entry = state["services"].get(name)
    if entry and _alive(entry):
        _terminate(entry["pid"])
    if extra_args:
        service = replace(service, argv=[*service.argv, *extra_args])
    state["services"][name] = _start(cluster, service, state["services"])
    _write_state(cluster, state["services"], complete=state.get("complete", False))
    return state["services"][name]["pid"]
