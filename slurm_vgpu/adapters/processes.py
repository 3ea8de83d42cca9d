"""Linux processes through /proc: when one started, so that a PID written down earlier is not taken
for the process that holds it now. PIDs come round again (``kernel.pid_max`` is 32768 by default),
so a PID left in a file by a process that was killed may name another process a minute later."""
from __future__ import annotations

import os
from pathlib import Path


def start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (/proc's ``stat`` field 22), None when
    it has ended; one that exited and is not yet reaped (a zombie) counts as ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rpartition(")")[2].split()
    return None if fields[0] == "Z" else int(fields[19])


def started_at(pid: int) -> float | None:
    """When process ``pid`` started, in seconds since the epoch (to the second: the kernel gives the
    boot time in whole seconds), None when it has ended."""
    ticks = start_ticks(pid)
    return None if ticks is None else _boot_time() + ticks / os.sysconf("SC_CLK_TCK")


def _boot_time() -> int:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return int(line.split()[1])
    raise RuntimeError("/proc/stat has no btime line")
