"""MPS supervision: a GPU's control daemon that died is started again, and the servers of the users
with running slices there get their caps back before any client can reconnect uncapped.

A daemon is wanted where its PID file is still there (it was started and did not ``quit``, which
removes the file) or where a slice runs. The restart takes the GPU's lock, as the prolog and epilog
do, so it never races one of them.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..adapters import mps
from ..config import Config
from ..node import store as node_store
from ..node.locking import gpu_lock

log = logging.getLogger("slurm_vgpu.agent")


def wanted(control: mps.MpsControl, running_uids: set[int]) -> bool:
    return bool(running_uids) or (control.pipe_dir / mps.PID_FILE).exists()


def restart_if_dead(config: Config, gpu_uuid: str, running_uids: set[int]) -> bool:
    """Start the GPU's daemon again when it should run and does not; True when it was restarted."""
    control = mps.control_for(config, gpu_uuid)
    if control.daemon_pid() is not None or not wanted(control, running_uids):
        return False
    with gpu_lock(config, gpu_uuid):
        if control.daemon_pid() is not None:
            return False
        (control.pipe_dir / mps.PID_FILE).unlink(missing_ok=True)
        control.ensure_running()
        if running_uids:
            with node_store.connect(config.database_url) as conn:
                for uid in sorted(running_uids):
                    limits = node_store.user_limits(conn, gpu_uuid, uid)
                    if limits is not None:
                        control.set_limits(control.ensure_server(uid), *limits)
    log.warning("MPS control daemon of %s had died; restarted (pid %s)", gpu_uuid, control.daemon_pid())
    return True


def daemon_running(config: Config, gpu_uuid: str) -> bool:
    return mps.control_for(config, gpu_uuid).daemon_pid() is not None


def log_dir(config: Config, gpu_uuid: str) -> Path:
    return mps.control_for(config, gpu_uuid).log_dir
