"""A dev cluster's accounting database on this machine's MariaDB: its own database and its own user,
granted that database only, written into a slurmdbd.conf only root reads; both dropped again. (The
slurmdbd that uses them runs in the e2e tests: tests/e2e/test_accounting.py.)"""
from __future__ import annotations

import subprocess

import pytest

from slurm_vgpu_dev import accounting
from slurm_vgpu_dev.cluster import Cluster, database_name


def as_user(conf: dict[str, str], sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mariadb", "-h", conf["StorageHost"], "-P", conf["StoragePort"], "-u", conf["StorageUser"],
                           f"-p{conf['StoragePass']}", "--batch", "--skip-column-names", "-e", sql],
                          capture_output=True, text=True)


@pytest.fixture
def prepared(tmp_path):
    cluster = Cluster(dir=tmp_path, port=21817)
    cluster.etc.mkdir()
    name = database_name(tmp_path)
    accounting.prepare(cluster, name)
    yield cluster, name
    accounting.drop(name)


def read_conf(cluster) -> dict[str, str]:
    return dict(line.split("=", 1) for line in accounting.conf_path(cluster).read_text().splitlines()
                if line and not line.startswith("#"))


def test_the_cluster_gets_a_database_and_a_user_granted_only_that_database(prepared):
    cluster, name = prepared
    conf = read_conf(cluster)
    assert conf["StorageLoc"] == conf["StorageUser"] == name
    assert accounting.conf_path(cluster).stat().st_mode & 0o777 == 0o600
    table = f"`{name}`.t"
    assert as_user(conf, f"CREATE TABLE {table} (x int); INSERT INTO {table} VALUES (1); SELECT x FROM {table}"
                   ).stdout.strip() == "1"
    assert as_user(conf, "SHOW DATABASES").stdout.split() == ["information_schema", name]
    refused = as_user(conf, "CREATE DATABASE slurm_vgpu_dev_not_mine")
    assert refused.returncode != 0 and "denied" in refused.stderr
    assert conf["DbdPort"] == str(cluster.port + 990) and conf["DbdHost"] == "localhost"


def test_a_second_prepare_changes_the_password_and_keeps_the_data(prepared):
    cluster, name = prepared
    first = read_conf(cluster)
    as_user(first, f"CREATE TABLE `{name}`.kept (x int)")
    accounting.prepare(cluster, name)
    second = read_conf(cluster)
    assert second["StoragePass"] != first["StoragePass"] and as_user(first, "SELECT 1").returncode != 0
    assert as_user(second, f"SHOW TABLES FROM `{name}`").stdout.split() == ["kept"]


def test_drop_removes_the_database_and_the_user(tmp_path):
    cluster = Cluster(dir=tmp_path, port=21817)
    cluster.etc.mkdir()
    name = database_name(tmp_path)
    accounting.prepare(cluster, name)
    accounting.drop(name)
    assert name not in accounting.mariadb("SHOW DATABASES").split()
    assert accounting.mariadb(f"SELECT count(*) FROM mysql.user WHERE user = '{name}'").strip() == "0"
    accounting.drop(name)  # dropping what is gone is harmless (down --drop-database twice)
