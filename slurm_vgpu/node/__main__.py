"""``python -m slurm_vgpu.node prolog|epilog --config PATH``: what the prolog.d/epilog.d wrappers run.

Exit status is what Slurm acts on: non-zero drains the node and requeues the job held. It is kept
for a node that cannot do its part (MPS missing or broken, configuration unreadable) and for a
prolog whose database does not answer: it cannot tell a vgpu job from a plain one then, and a vgpu
job must never start without its slice. The agent heals the latter once the database answers
(:mod:`.failed`). An epilog whose database does not answer exits 0: the job has ended, its slice
file is gone, and the placement daemon releases the placement when it sees the job ended.
"""
from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys

import psycopg

from ..config import ConfigError, load
from ..mps import MpsError
from . import epilog, failed, prolog

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
        reason = "placement database unusable: " + (str(exc).strip() or type(exc).__name__).splitlines()[0]
        if args.hook == "epilog":
            log.error("epilog of job %s: %s; the placement daemon releases its slice", os.environ["SLURM_JOB_ID"],
                      reason)
            return 0
        failed.record(config, node, int(os.environ["SLURM_JOB_ID"]), reason,
                      int(os.environ.get("SLURM_JOB_RESTART_COUNT") or 0))
        log.error("prolog of job %s: %s; Slurm requeues the job held, the agent releases it once the "
                  "database answers", os.environ["SLURM_JOB_ID"], reason)
        return 1


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
