"""The dev kit's Slurm releases: the offered ones, the cache key, and a root filesystem build that
fails halfway (nothing cached, the failed step and the retry named). The real builds run in the e2e
legs of ./scripts/test."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from slurm_vgpu_dev import releases
from slurm_vgpu_dev.cli import main
from slurm_vgpu_dev.cluster import database_name, unified_hierarchy


def test_an_unoffered_release_is_refused_with_the_offered_ones():
    with pytest.raises(releases.ReleaseError, match=r"Slurm 23.02 is not offered; choose one of: 22.05, 24.11, 26.05"):
        releases.get("23.02")
    result = CliRunner().invoke(main, ["up", "--slurm", "23.02", "--dir", "/nonexistent/x"])
    assert result.exit_code != 0 and "choose one of: 22.05, 24.11, 26.05" in result.output


def test_the_cache_entry_changes_with_the_package_list(monkeypatch):
    release = releases.get("24.11")
    before = release.rootfs
    assert before.parent == releases.ROOTFS_CACHE and before.name.startswith("24.11-")
    monkeypatch.setattr(releases, "PACKAGES", (*releases.PACKAGES, "strace"))
    assert release.rootfs != before
    assert releases.get("22.05").rootfs is None and releases.get(None).name == "22.05"


def fake_tools(tmp_path: Path, monkeypatch, mmdebstrap: str, patchelf: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("mmdebstrap", mmdebstrap), ("patchelf", patchelf)):
        (bin_dir / name).write_text("#!/bin/sh\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(releases, "ROOTFS_CACHE", tmp_path / "cache")


@pytest.mark.parametrize("mmdebstrap,patchelf,step", [
    ("echo 'E: Release file expired'; exit 25", "exit 0", "mmdebstrap"),
    # the tree is there, a later step fails: it must not be reused
    ('for a; do last=$a; prev=$b; b=$a; done; mkdir -p "$prev/usr/sbin" "$prev/usr/bin" '
     '"$prev/usr/lib/x86_64-linux-gnu/slurm-wlm"; printf "\\177ELF" > "$prev/usr/sbin/slurmd-wlm"', "exit 1",
     "patchelf"),
])
def test_a_build_that_fails_halfway_caches_nothing_and_says_how_to_retry(tmp_path, monkeypatch, mmdebstrap,
                                                                        patchelf, step):
    fake_tools(tmp_path, monkeypatch, mmdebstrap, patchelf)
    release = releases.get("24.11")
    with pytest.raises(releases.ReleaseError) as failed:
        releases.ensure(release)
    message = str(failed.value)
    assert f"failed at step {step!r}" in message and "Nothing was cached" in message
    assert "slurm-vgpu-dev up --slurm 24.11" in message and str(release.rootfs) + ".log" in message
    left = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert left == [".lock", release.rootfs.name + ".log"]  # no tree, no half-built directory


def test_each_cluster_directory_has_its_own_database(tmp_path):
    assert database_name(tmp_path / "a") != database_name(tmp_path / "b")
    assert database_name(tmp_path / "a") == database_name(tmp_path / "a")
    assert database_name(tmp_path / "a").startswith("slurm_vgpu_dev_")


def test_the_unified_hierarchy_is_found_in_mountinfo(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
                         "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
    assert unified_hierarchy(mountinfo) == Path("/sys/fs/cgroup/unified")
    mountinfo.write_text("31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n")
    assert unified_hierarchy(mountinfo) is None
