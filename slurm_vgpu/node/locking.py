"""One prolog or epilog at a time per GPU: two jobs starting together must not both start a
control daemon, nor set one server's caps from stale reads."""
from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager

from ..config import Config


@contextmanager
def gpu_lock(config: Config, gpu_uuid: str) -> Iterator[None]:
    directory = config.gpu_dir(gpu_uuid)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
