"""One GPU's MPS from start to end: its lock, its control daemon and one capped server per user.

The prolog, the epilog and the node agent each change a GPU's MPS only through :class:`GpuMps`,
and only under the GPU's lock: two jobs starting together must not both start a control daemon,
nor set one server's caps from stale reads of the slices.
"""
from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import slices
from .control import MpsControl
from .slices import Caps

if TYPE_CHECKING:
    import psycopg

    from ..config import Config

# Opens a connection when one is needed: the agent asks every round and rarely has anything to read.
Connect = Callable[[], "psycopg.Connection"]


@dataclass(frozen=True)
class GpuMps:
    """The MPS of one GPU, under ``directory`` (``RunDir/mps/<uuid>``): ``lock``, and the control
    daemon's ``pipe`` and ``log`` directories."""

    control: MpsControl
    directory: Path

    @classmethod
    def of(cls, config: Config, gpu_uuid: str) -> GpuMps:
        base = config.gpu_dir(gpu_uuid)
        return cls(MpsControl(config.mps_control, gpu_uuid, base / "pipe", base / "log"), base)

    @property
    def uuid(self) -> str:
        return self.control.gpu_uuid

    @contextmanager
    def serving(self, conn: psycopg.Connection, uid: int, placement_id: int) -> Iterator[None]:
        """Start the daemon and ``uid``'s server, capped for its running slices and placement
        ``placement_id``; the GPU stays locked until the block ends, so the caller marks the
        placement running before an epilog lowers the caps without it or :meth:`stop_idle` looks."""
        with self._locked():
            self.control.ensure_running()
            self.control.open_to(slices.active_uids(conn, self.uuid) | {uid})
            caps = slices.user_caps(conn, self.uuid, uid, including=placement_id)
            self._cap(self.control.ensure_server(uid), caps)
            yield

    def job_ended(self, conn: psycopg.Connection, uid: int) -> Caps | None:
        """After one of ``uid``'s slices ended: lower its server to the slices it still runs, or stop
        it when none is left. Returns the caps the user keeps, None when no slice is left."""
        with self._locked():
            server = self.control.servers().get(uid) if self.control.running() else None
            remaining = slices.user_caps(conn, self.uuid, uid)
            if server is not None and remaining is None:
                self.control.shutdown_server(server)
            elif server is not None:
                self._cap(server, remaining)
            if remaining is None and self.control.pipe_dir.exists():
                self.control.open_to(slices.active_uids(conn, self.uuid))
        return remaining

    def restart_if_dead(self, running_uids: set[int], connect: Connect) -> bool:
        """Start the daemon again when it should run and does not, and give the servers of
        ``running_uids`` their caps back before a client can reconnect uncapped; True when it was
        restarted. It should run where a slice runs, or where its PID file is left (it was started
        and did not ``quit``, which removes the file)."""
        if self.control.running() or not (running_uids or self.control.pid_file.exists()):
            return False
        with self._locked():
            if self.control.running():
                return False
            self.control.pid_file.unlink(missing_ok=True)
            self._start_capped(running_uids, connect)
        return True

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

    def _start_capped(self, running_uids: set[int], connect: Connect) -> None:
        """Start the daemon, open it to ``running_uids`` and start their servers with their slices'
        caps: the restart of :meth:`restart_if_dead` and :meth:`restart_wedged`, under the lock."""
        self.control.ensure_running()
        self.control.open_to(running_uids)
        if running_uids:
            with connect() as conn:
                for uid in sorted(running_uids):
                    caps = slices.user_caps(conn, self.uuid, uid)
                    if caps is not None:
                        self._cap(self.control.ensure_server(uid), caps)

    def stop_idle(self, connect: Connect) -> list[int]:
        """Stop the servers whose user has no active slice on the GPU; returns their uids. The slices
        are read under the lock, which :meth:`serving` holds until its placement runs, so a server
        just started for a new job is never taken for idle."""
        if not self.control.running():
            return []
        with self._locked():
            servers = self.control.servers()
            if not servers:
                return []
            with connect() as conn:
                active = slices.active_uids(conn, self.uuid)
            idle = {uid: pid for uid, pid in servers.items() if uid not in active}
            for pid in idle.values():
                self.control.shutdown_server(pid)
            if idle:
                self.control.open_to(active)
        return sorted(idle)

    def _cap(self, server: int, caps: Caps) -> None:
        self.control.set_limits(server, caps.share, caps.memory_mib)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """A per-GPU flock, held by one prolog, epilog or agent step at a time."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
