"""Slurm's accounting on a dev cluster: a slurmdbd of its own, storing into a MariaDB database of its
own on this machine's server (127.0.0.1:3306, reached as root without a password, as
scripts/setup.sh leaves it), through a MariaDB user granted that database only.

``up`` creates the database and user (a new password each time) and writes slurmdbd.conf; once
slurmdbd answers, it registers the cluster, one account and the dev users with ``sacctmgr -i``, so
``sacct``, ``sreport`` and ``sshare`` see every job and fair-share orders the waiting ones.
``down --drop-database`` drops both. docs/slurm-releases.md.
"""
from __future__ import annotations

import os
import pwd
import secrets
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cluster import Cluster, Service

MARIADB_HOST = "127.0.0.1"
MARIADB_PORT = 3306
CLUSTER_NAME = "vgpu-dev"  # slurm.conf's ClusterName (each cluster has a database of its own)
ACCOUNT = "vgpu-dev"  # every dev user's account
USER_PREFIX = "vgpu-"  # the local users the tests and the chaos run create (besides root)
SERVICE = "slurmdbd"


class AccountingError(RuntimeError):
    pass


def dbd_port(cluster: Cluster) -> int:
    """slurmdbd's port: slurmctld's + 990, below the agents' metrics ports (+1001 on) and clear of
    the slurmd ports of this cluster and of clusters a few dozen ports up."""
    return cluster.port + 990


def conf_path(cluster: Cluster) -> Path:
    """slurmdbd reads slurmdbd.conf beside the slurm.conf that SLURM_CONF names."""
    return cluster.etc / "slurmdbd.conf"


def mariadb(sql: str) -> str:
    """Run ``sql`` on the local MariaDB server as its administrator; its output, tab-separated."""
    result = subprocess.run(
        ["mariadb", "-h", MARIADB_HOST, "-P", str(MARIADB_PORT), "-u", "root", "--batch", "--skip-column-names",
         "-e", sql], capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise AccountingError(f"MariaDB on {MARIADB_HOST}:{MARIADB_PORT} refused {sql.split()[0]}: "
                              f"{result.stderr.strip()} (scripts/setup.sh starts it and lets root in over loopback)")
    return result.stdout


def prepare(cluster: Cluster, database: str) -> None:
    """Create the cluster's database and its user (granted that database only; a new password),
    and write slurmdbd.conf with them. ``database`` is the cluster's database name."""
    password = secrets.token_hex(16)
    account = f"'{database}'@'{MARIADB_HOST}'"
    mariadb(f"CREATE DATABASE IF NOT EXISTS `{database}`; CREATE USER IF NOT EXISTS {account}; "
            f"ALTER USER {account} IDENTIFIED BY '{password}'; GRANT ALL ON `{database}`.* TO {account}")
    plugin_dir = cluster.slurm.plugin_dir
    lines = [
        "# slurmdbd.conf of a slurm-vgpu dev cluster: loopback only, its own MariaDB database and user.",
        "AuthType=auth/munge",
        f"AuthInfo=socket={cluster.munge_socket}",
        "DbdHost=localhost",
        "DbdAddr=127.0.0.1",
        # listen on the address of the host's name, not on every address: slurmdbd runs in a UTS
        # namespace named localhost (:func:`service`), so on 127.0.0.1 only
        "CommunicationParameters=NoInAddrAny",
        f"DbdPort={dbd_port(cluster)}",
        "SlurmUser=root",
        "DebugLevel=info",
        f"LogFile={cluster.dir}/log/slurmdbd.log",
        f"PidFile={cluster.dir}/run/slurmdbd.pid",
        *([f"PluginDir={plugin_dir}"] if plugin_dir else []),
        "StorageType=accounting_storage/mysql",
        f"StorageHost={MARIADB_HOST}",
        f"StoragePort={MARIADB_PORT}",
        f"StorageLoc={database}",
        f"StorageUser={database}",
        f"StoragePass={password}",
    ]
    path = conf_path(cluster)
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)  # slurmdbd refuses a slurmdbd.conf others may read (it holds the password)


def drop(database: str) -> None:
    """Drop a cluster's database and its user (``down --drop-database``)."""
    mariadb(f"DROP DATABASE IF EXISTS `{database}`; DROP USER IF EXISTS '{database}'@'{MARIADB_HOST}'")


def service(cluster: Cluster) -> Service:
    """slurmdbd in the foreground; it finds slurmdbd.conf beside SLURM_CONF's slurm.conf."""
    from .cluster import Service  # imported here: cluster.py imports this module

    return Service(SERVICE, [cluster.slurm.program("slurmdbd"), "-D"], uts="localhost")


def dev_users() -> list[str]:
    """root and this machine's dev users (named ``vgpu-...``)."""
    return ["root", *sorted(u.pw_name for u in pwd.getpwall() if u.pw_name.startswith(USER_PREFIX))]


def register(cluster: Cluster, timeout: float) -> None:
    """Once slurmdbd answers: the cluster, the account and the dev users, each added if missing."""
    deadline = time.monotonic() + timeout
    while True:
        answer = sacctmgr(cluster, "list", "cluster", "format=cluster", check=False)
        if answer.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise AccountingError(f"slurmdbd not answering after {timeout:.0f}s ({answer.stderr.strip()}); "
                                  f"see {cluster.dir}/log/slurmdbd.log")
        time.sleep(0.3)
    if CLUSTER_NAME not in answer.stdout.split():
        sacctmgr(cluster, "add", "cluster", CLUSTER_NAME)
    if ACCOUNT not in sacctmgr(cluster, "list", "account", "format=account").stdout.split():
        sacctmgr(cluster, "add", "account", ACCOUNT, f"cluster={CLUSTER_NAME}", "description=dev users",
                 "organization=slurm-vgpu")
    add_users(cluster, dev_users())


def add_users(cluster: Cluster, names: list[str]) -> None:
    """Give users an association under the dev account (those that have one keep it)."""
    known = set(sacctmgr(cluster, "list", "user", "format=user").stdout.split())
    missing = [n for n in names if n not in known]
    if missing:
        sacctmgr(cluster, "add", "user", ",".join(missing), f"account={ACCOUNT}", f"cluster={CLUSTER_NAME}")


def sacctmgr(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["sacctmgr", "-i", "-n", "-P", *args], env={**os.environ, **cluster.env()},
                            capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AccountingError(f"sacctmgr {' '.join(args)} failed: {(result.stderr or result.stdout).strip()}")
    return result

