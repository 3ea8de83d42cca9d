"""One GPU's MPS from start to end: its lock, its compute mode, its control daemon and one capped
server per user.

The prolog, the epilog and the node agent each change a GPU's MPS only through :class:`GpuMps`,
and only under the GPU's lock: two jobs starting together must not both start a control daemon,
nor set one server's caps from stale reads of the slices.

A GPU that carries slices is EXCLUSIVE_PROCESS while its control daemon runs: only the MPS server
then holds a context there, so a task that drops its ``CUDA_MPS_*`` variables (a client that finds
no daemon runs "as it normally would without MPS") gets no context of its own, uncapped, beside
it. The mode is set before the daemon starts, and set back to DEFAULT once the GPU carries no slice
and its daemon has quit (``ExclusiveComputeMode=no`` leaves the mode alone).
"""
from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..adapters.gpus import ComputeMode, ComputeModeRefused, GpuInventory, InventoryError, inventory_from
from . import slices
from .control import MpsControl, MpsError
from .slices import Caps

if TYPE_CHECKING:
    import psycopg

    from ..config import Config

# Opens a connection when one is needed: the agent asks every round and rarely has anything to read.
Connect = Callable[[], "psycopg.Connection"]


@dataclass(frozen=True)
class GpuMps:
    """The MPS of one GPU, under ``directory`` (``RunDir/mps/<uuid>``): ``lock``, and the control
    daemon's ``pipe`` and ``log`` directories. ``gpus`` sets the GPU's compute mode, unless
    ``exclusive`` is off."""

    control: MpsControl
    directory: Path
    gpus: GpuInventory
    exclusive: bool = True

    @classmethod
    def of(cls, config: Config, gpu_uuid: str, node: str | None = None) -> GpuMps:
        """``node``: whose ``Inventory`` holds the GPU, when not ``config.node`` (the prolog is told
        its node by slurmd)."""
        base = config.gpu_dir(gpu_uuid)
        gpus = inventory_from(config.inventory_for(node or config.node))
        return cls(MpsControl(config.mps_control, gpu_uuid, base / "pipe", base / "log"), base, gpus,
                   config.exclusive_compute_mode)

    @property
    def uuid(self) -> str:
        return self.control.gpu_uuid

    @contextmanager
    def serving(self, conn: psycopg.Connection, uid: int, placement_id: int) -> Iterator[None]:
        """Start the daemon and ``uid``'s server, capped for its running slices and placement
        ``placement_id``; the GPU stays locked until the block ends, so the caller marks the
        placement running before an epilog lowers the caps without it or :meth:`stop_idle` looks."""
        with self._locked():
            self._start()
            users = slices.active_uids(conn, self.uuid) | {uid}
            caps = {u: slices.user_caps(conn, self.uuid, u, including=placement_id) for u in users}
            self._open_to(caps)
            self._cap(self.control.ensure_server(uid), caps[uid])
            yield

    @contextmanager
    def handed_over_whole(self, conn: psycopg.Connection) -> Iterator[None]:
        """The GPU for a whole-GPU job, which Slurm gives the job natively: no MPS daemon on it (one
        left from the GPU's last slices is quit) and its DEFAULT compute mode back. Locked until the
        block ends, so the caller marks the placement running before a slice's prolog could look. A
        GPU that still carries slices (never, while the capacity guard holds) is refused."""
        with self._locked():
            users = slices.active_uids(conn, self.uuid)
            if users:
                raise MpsError(f"GPU {self.uuid} carries slices of uids {sorted(users)}; it cannot be given whole")
            with _gpu_errors():
                exclusive = self.exclusive and self.gpus.compute_mode(self.uuid) is not ComputeMode.DEFAULT
            if self.control.running() or exclusive:
                self._stop()
            yield

    def job_ended(self, conn: psycopg.Connection, uid: int) -> Caps | None:
        """After one of ``uid``'s slices ended: lower its server to the slices it still runs, or stop
        it when none is left, and the daemon when the GPU carries no slice at all. Returns the caps
        the user keeps, None when no slice is left."""
        with self._locked():
            server = self.control.servers().get(uid) if self.control.running() else None
            remaining = slices.user_caps(conn, self.uuid, uid)
            if server is not None and remaining is None:
                self.control.shutdown_server(server)
            elif server is not None:
                self._cap(server, remaining)
            if remaining is None and self.control.pipe_dir.exists():
                active = slices.active_uids(conn, self.uuid)
                self.control.open_to(active)
                if not active:
                    self._stop()
        return remaining

    def restart_if_dead(self, running_uids: set[int], connect: Connect) -> bool:
        """Start the daemon again when it should run and does not, and give the servers of
        ``running_uids`` their caps back before a client can reconnect uncapped; True when it was
        restarted. It should run where a slice runs, or where its PID file is left (it was started
        and did not ``quit``, which removes the file) and the GPU still carries a slice."""
        if self.control.running() or not (running_uids or self.control.pid_file.exists()):
            return False
        with self._locked():
            if self.control.running():
                return False
            self.control.pid_file.unlink(missing_ok=True)
            return self._start_capped(running_uids, connect)

    def restart_wedged(self, daemon_pid: int, running_uids: set[int], connect: Connect) -> list[int] | None:
        """Kill the control daemon ``daemon_pid`` that stopped answering, and its servers, and start
        it again as :meth:`restart_if_dead` does; returns the killed servers' PIDs, None when the
        daemon was no longer ``daemon_pid`` once the GPU was locked (another step restarted it)."""
        with self._locked():
            if self.control.daemon_pid() != daemon_pid:
                return None
            servers = self.control.kill(daemon_pid)
            self._start_capped(running_uids, connect)
        return servers

    def _start_capped(self, running_uids: set[int], connect: Connect) -> bool:
        """Start the daemon, open it to ``running_uids`` and start their servers with their slices'
        caps: the restart of :meth:`restart_if_dead` and :meth:`restart_wedged`, under the lock.
        A GPU that carries no slice any more (read here: ``running_uids`` may predate a prolog) is
        left without a daemon, DEFAULT again; True when the daemon was started."""
        if not running_uids:
            with connect() as conn:
                if not slices.active_uids(conn, self.uuid):
                    self._stop()
                    return False
        self._start()
        with connect() as conn:
            caps = {uid: slices.user_caps(conn, self.uuid, uid) for uid in running_uids}
        self._open_to(caps)
        for uid in sorted(running_uids):
            if caps[uid] is not None:
                self._cap(self.control.ensure_server(uid), caps[uid])
        return True

    def stop_idle(self, connect: Connect) -> list[int]:
        """Stop the servers whose user has no active slice on the GPU, and the daemon when no user
        has; returns the servers' uids. The slices are read under the lock, which :meth:`serving`
        holds until its placement runs, so a server just started for a new job is never taken for
        idle."""
        if not self.control.running():
            return []
        with self._locked():
            if not self.control.running():
                return []
            servers = self.control.servers()
            with connect() as conn:
                active = slices.active_uids(conn, self.uuid)
            idle = {uid: pid for uid, pid in servers.items() if uid not in active}
            for pid in idle.values():
                self.control.shutdown_server(pid)
            if idle or not active:
                self.control.open_to(active)
            if not active:
                self._stop()
        return sorted(idle)

    def _start(self) -> None:
        """Make the GPU exclusive to MPS, then start its daemon unless it runs. A GPU being made
        exclusive afresh must hold no process: NVML sets the mode all the same, but a context
        held already stays, and the MPS server could then get none."""
        running = self.control.running()
        with _gpu_errors():
            exclusive_now = not self.exclusive or self.gpus.compute_mode(self.uuid) is ComputeMode.EXCLUSIVE_PROCESS
            in_use = [] if running or exclusive_now else [p.pid for p in self.gpus.processes(self.uuid)]
        if not exclusive_now:
            if in_use:
                raise MpsError(f"GPU {self.uuid} is in use outside MPS (pid {', '.join(map(str, in_use))}): its MPS "
                               "server could not hold it alone; end those processes")
            self._set_mode(ComputeMode.EXCLUSIVE_PROCESS)
        if not running:
            try:
                self.control.ensure_running()
            except MpsError:
                self._stop()
                raise

    def _stop(self) -> None:
        """Quit the daemon (its servers with it), then give the GPU back its DEFAULT mode."""
        self.control.quit()
        if self.exclusive:
            self._set_mode(ComputeMode.DEFAULT)

    def _set_mode(self, mode: ComputeMode) -> None:
        with _gpu_errors():
            self.gpus.set_compute_mode(self.uuid, mode)

    def _open_to(self, caps: dict[int, Caps | None]) -> None:
        """Let these users into the pipes once any server they make start can only be capped: a
        client that connects before its user's server has its own caps makes the daemon start that
        server with its default limits, which are set first to the tightest caps on the GPU."""
        owed = [c for c in caps.values() if c is not None]
        if owed:
            tightest = slices.tightest(owed)
            self.control.set_default_limits(tightest.share, tightest.memory_mib)
        self.control.open_to(caps.keys())

    def _cap(self, server: int, caps: Caps) -> None:
        self.control.set_limits(server, caps.share, caps.memory_mib)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """A per-GPU flock, held by one prolog, epilog or agent step at a time."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield


@contextmanager
def _gpu_errors() -> Iterator[None]:
    """The GPU adapter's failures as MPS's: the hooks and the agent fail a step on MpsError alike."""
    try:
        yield
    except ComputeModeRefused as exc:
        raise MpsError(f"{exc}. A slice without an exclusive GPU is not a slice: a task that unsets "
                       "CUDA_MPS_PIPE_DIRECTORY would get an uncapped context beside the MPS server. Run "
                       "slurm-vgpu as root on a GPU that supports compute modes, or set "
                       "ExclusiveComputeMode=no in slurm-vgpu.conf to go without (weaker)") from None
    except InventoryError as exc:
        raise MpsError(str(exc)) from None
