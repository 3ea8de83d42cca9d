"""``fleet doctor|status`` over real SSH: a private sshd on loopback (own host key, an authorized key
made here), hosts mapped to it by an SSH config, the remote side being this venv's slurm-vgpu."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .cli_support import cli, insert_inventory  # noqa: F401

SSHD = Path("/usr/sbin/sshd")
SLURM_VGPU = Path(sys.executable).parent / "slurm-vgpu"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"sshd exited: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"sshd not listening on {port}: {log.read_text()}")


@pytest.fixture
def ssh_hosts(tmp_path):
    """gpu01 and gpu02 reach a private sshd (one port each); gpu03 points at a closed port."""
    if not SSHD.exists() or not shutil.which("ssh-keygen"):
        pytest.fail("openssh-server is needed: apt-get install -y openssh-server")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    keys = tmp_path / "ssh"
    keys.mkdir(mode=0o700)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    (keys / "authorized_keys").write_text((keys / "client_key.pub").read_text())
    ports = {"gpu01": free_port(), "gpu02": free_port(), "gpu03": free_port()}
    (keys / "sshd_config").write_text(
        "".join(f"Port {ports[h]}\n" for h in ("gpu01", "gpu02"))
        + f"ListenAddress 127.0.0.1\nHostKey {keys / 'host_key'}\nAuthorizedKeysFile {keys / 'authorized_keys'}\n"
        f"PidFile {keys / 'sshd.pid'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
    )
    (keys / "ssh_config").write_text("".join(
        f"Host {host}\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {keys / 'client_key'}\n"
        "  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n"
        for host, port in ports.items()
    ))
    log = keys / "sshd.log"
    with open(log, "w") as out:
        sshd = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(keys / "sshd_config")],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        for host in ("gpu01", "gpu02"):
            wait_listening(ports[host], sshd, log)
        yield keys / "ssh_config"
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)


@pytest.fixture
def remote(cli, tmp_path, ssh_hosts):
    """The fleet options: our SSH config, and slurm-vgpu run remotely with a config naming the test database."""
    remote_config = tmp_path / "remote.conf"
    remote_config.write_text(f"DatabaseUrl={cli.database_url}\nMpsControl=/bin/true\nRunDir={tmp_path}\n")
    return ["fleet", "--ssh-config", str(ssh_hosts), "--connect-timeout", "5",
            "--remote-command", f"{SLURM_VGPU} --config {remote_config}"]


def test_fleet_status_runs_gpus_on_each_host_for_that_host(cli, remote):
    insert_inventory(cli.engine)
    result = cli(*remote, "status", "gpu[01-02]", "--json")
    assert result.exit_code == 0, result.output
    hosts = json.loads(result.stdout)["hosts"]
    assert [h["host"] for h in hosts] == ["gpu01", "gpu02"]
    assert all(h["reachable"] and h["exit_status"] == 0 and h["status"] == "OK" for h in hosts)
    assert [g["gres_type"] for g in hosts[0]["report"]["gpus"]] == ["h100_0", "h100_1"]
    assert [g["gres_type"] for g in hosts[1]["report"]["gpus"]] == ["a100_0", "t4_1"]


def test_unreachable_host_is_reported_and_exits_1(cli, remote):
    insert_inventory(cli.engine)
    assert cli("drain", "gpu02:1", "--reason", "ecc").exit_code == 0
    result = cli(*remote, "status", "gpu[01-03]")
    assert result.exit_code == 1
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:]}
    assert rows["gpu01"].split()[1] == "OK"
    assert rows["gpu02"].split()[1] == "DEGRADED", "a drained GPU is worth a look"
    assert rows["gpu03"].split()[1] == "UNREACHABLE"


def test_fleet_doctor_summarises_each_hosts_checks(cli, remote):
    result = cli(*remote, "doctor", "gpu[01-02]", "--json")
    assert result.exit_code == 1, "the hosts have no Slurm configuration: doctor fails there"
    hosts = json.loads(result.stdout)["hosts"]
    assert [h["host"] for h in hosts] == ["gpu01", "gpu02"]
    for host in hosts:
        checks = {c["name"]: c["status"] for c in host["report"]["checks"]}
        assert host["status"] == "FAIL" and host["exit_status"] == 1
        assert checks["database"] == "OK" and checks["mps"] == "OK"
    table = cli(*remote, "doctor", "gpu01").stdout
    assert "FAIL" in table and "database" not in table, "only the checks that are not OK are listed"
