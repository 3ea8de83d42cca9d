"""``python -m slurm_vgpu.node prolog|epilog --config PATH``: what the prolog.d/epilog.d wrappers run.

Exit status is what Slurm acts on: non-zero drains the node and requeues the job, so it is kept for
a node that cannot do its part (MPS missing or broken, configuration unreadable). A job the
placement does not know, or a database that cannot be reached, is logged and exits 0: draining every
node because Postgres restarted would be worse, and such a vgpu job gets no slice (see docs/node.md).
"""
from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys

import psycopg

from ..adapters.mps import MpsError
from ..config import ConfigError, load
from . import epilog, prolog

HOOKS = {"prolog": prolog.run, "epilog": epilog.run}
log = logging.getLogger("slurm-vgpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slurm_vgpu.node")
    parser.add_argument("hook", choices=sorted(HOOKS))
    parser.add_argument("--config", required=True, help="path of slurm-vgpu.conf")
    args = parser.parse_args(argv)
    _log_to_syslog(args.hook)
    if "SLURM_JOB_ID" not in os.environ:
        log.error("%s: SLURM_JOB_ID is not set; run me from slurmd's Prolog/Epilog", args.hook)
        return 1
    try:
        config = load(args.config)
        node = config.node_name or os.environ.get("SLURMD_NODENAME") or config.node
        return HOOKS[args.hook](config, os.environ, node)
    except (ConfigError, MpsError) as exc:
        log.error("%s of job %s: %s", args.hook, os.environ["SLURM_JOB_ID"], exc)
        return 1
    except psycopg.Error as exc:
        log.error("%s of job %s: placement database unusable, job left without a slice: %s",
                  args.hook, os.environ["SLURM_JOB_ID"], str(exc).strip())
        return 0


def _log_to_syslog(hook: str) -> None:
    """syslog (slurmd discards a prolog's output), and stderr, which slurmd logs when a hook fails."""
    log.setLevel(logging.INFO)
    log.addHandler(logging.StreamHandler(sys.stderr))
    if not os.path.exists("/dev/log"):
        return
    handler = logging.handlers.SysLogHandler(address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
    handler.setFormatter(logging.Formatter(f"slurm-vgpu-{hook}[%(process)d]: %(message)s"))
    log.addHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
