"""The Slurm releases a dev cluster can run: 22.05 from this machine's packages (cgroup v1), newer ones
from a root filesystem of Debian's packages, built once with mmdebstrap and cached.

The root filesystem is never entered with chroot: its Slurm binaries and libraries are patched
(patchelf) to load through its own dynamic loader and libraries, so slurmctld, slurmd, slurmstepd
and the client commands run on this machine as they are, for any user, and everything they start
(prolog, epilog, job scripts) runs this machine's programs (its Python and the checkout's venv).
See docs/slurm-releases.md.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOTFS_CACHE = Path(os.environ.get("SLURM_VGPU_ROOTFS_CACHE", "/var/cache/slurm-vgpu/rootfs"))
MIRROR = os.environ.get("SLURM_VGPU_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What the root filesystem holds besides Debian's essential set: the daemons (slurmdbd for the
# cluster's accounting), the client commands, and the headers our SPANK plugin is built against
# (munge, lua and slurmdbd's MariaDB plugin come as their dependencies).
PACKAGES = ("slurmd", "slurmctld", "slurmdbd", "slurm-client", "libslurm-dev", "munge")
CLIENTS = ("sacct", "sacctmgr", "salloc", "sattach", "sbatch", "sbcast", "scancel", "scontrol", "sdiag", "sinfo",
           "sprio", "squeue", "sreport", "srun", "sshare", "sstat", "strigger")
# Each daemon and the file Debian installs it as in /usr/sbin (the -wlm ones through /etc/alternatives).
DAEMONS = {"slurmctld": "slurmctld-wlm", "slurmd": "slurmd-wlm", "slurmstepd": "slurmstepd-wlm", "slurmdbd": "slurmdbd"}
BIN = "slurm-vgpu-bin"  # in the root filesystem: one link per program, named as Slurm expects
# Bumped when the way a root filesystem is made changes (the steps below), so old caches are not reused.
RECIPE = "1"


class ReleaseError(RuntimeError):
    pass


@dataclass(frozen=True)
class Release:
    name: str  # 22.05, 24.11, 26.05
    suite: str | None  # Debian suite of its root filesystem; None: this machine's packages
    cgroup: str  # v1 | v2: the cgroup plugin its dev nodes run

    @property
    def rootfs(self) -> Path | None:
        """Where its root filesystem is cached (None for this machine's Slurm)."""
        if self.suite is None:
            return None
        key = hashlib.sha256("\n".join([RECIPE, self.suite, MIRROR, *sorted(PACKAGES)]).encode()).hexdigest()[:12]
        return ROOTFS_CACHE / f"{self.name}-{key}"

    @property
    def bin_dir(self) -> Path | None:
        """Its Slurm programs (daemons and clients), or None: this machine's, on PATH and in /usr/sbin."""
        return self.rootfs / BIN if self.rootfs else None

    @property
    def plugin_dir(self) -> Path | None:
        return self.rootfs / "usr/lib/x86_64-linux-gnu/slurm-wlm" if self.rootfs else None

    @property
    def include_dir(self) -> str:
        """The headers its SPANK plugin is built against."""
        return str(self.rootfs / "usr/include") if self.rootfs else "/usr/include"

    def program(self, name: str) -> str:
        if self.bin_dir is not None:
            return str(self.bin_dir / name)
        return shutil.which(name, path=f"/usr/sbin:/usr/bin:{os.environ.get('PATH', '')}") or name


RELEASES = {
    "22.05": Release("22.05", None, "v1"),
    "24.11": Release("24.11", "trixie", "v2"),
    "26.05": Release("26.05", "sid", "v2"),
}
DEFAULT = "22.05"


def get(name: str | None) -> Release:
    """The release of that name; an error listing the offered ones for any other."""
    release = RELEASES.get(name or DEFAULT)
    if release is None:
        raise ReleaseError(f"Slurm {name} is not offered; choose one of: {', '.join(RELEASES)}")
    return release


def ensure(release: Release, log=None) -> Path | None:
    """Its root filesystem, built now if it is not cached yet (one build at a time per machine);
    None for this machine's Slurm."""
    target = release.rootfs
    if target is None or (target / BIN).is_dir():
        return target
    ROOTFS_CACHE.mkdir(parents=True, exist_ok=True)
    with open(ROOTFS_CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / BIN).is_dir():
            _build(release, target, log or (lambda message: None))
    return target


def _build(release: Release, target: Path, log) -> None:
    """Build into a temporary directory beside the cache entry and rename it into place only once
    every step passed: a half-built tree is removed, never reused."""
    if shutil.which("mmdebstrap") is None or shutil.which("patchelf") is None:
        raise ReleaseError(f"building Slurm {release.name}'s root filesystem needs mmdebstrap and patchelf: "
                           "apt-get install mmdebstrap patchelf (scripts/setup.sh installs them)")
    if target.exists():  # an entry without its bin/ is a leftover of an older kit: never trusted
        shutil.rmtree(target)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    build_log = target.parent / f"{target.name}.log"
    started = time.monotonic()
    steps = [
        ("mmdebstrap", lambda: _mmdebstrap(release, work / "root", build_log)),
        ("patchelf", lambda: _patch(work / "root", target)),
        ("links", lambda: _links(work / "root")),
        ("check", lambda: _check(release, work / "root", target)),
    ]
    log(f"building Slurm {release.name}'s root filesystem from Debian {release.suite} (once; a few minutes)")
    try:
        for name, step in steps:
            try:
                step()
            except (OSError, subprocess.CalledProcessError, ReleaseError) as exc:
                raise ReleaseError(
                    f"building Slurm {release.name}'s root filesystem failed at step {name!r}: {exc} "
                    f"(log: {build_log}). Nothing was cached; retry with the same command "
                    f"(slurm-vgpu-dev up --slurm {release.name})."
                ) from exc
        (work / "root").rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"built {target} in {time.monotonic() - started:.0f}s")


def _mmdebstrap(release: Release, root: Path, build_log: Path) -> None:
    with open(build_log, "w") as out:
        subprocess.run(
            ["mmdebstrap", "--variant=essential", f"--include={','.join(PACKAGES)}",
             # The archive these machines reach may serve a frozen snapshot whose sid Release has expired.
             "--aptopt=Acquire::Check-Valid-Until \"false\"", release.suite, str(root), MIRROR],
            stdout=out, stderr=subprocess.STDOUT, check=True,
        )


def _elf(path: Path) -> bool:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"
    return False


def _patch(root: Path, final: Path) -> None:
    """Every Slurm program loads through the root filesystem's loader, and every Slurm object finds
    its libraries there first (DT_RPATH, which also covers the libraries they pull in); paths are
    those the tree will have once renamed into place."""
    libdirs = [final / "usr/lib/x86_64-linux-gnu/slurm-wlm", final / "usr/lib/x86_64-linux-gnu"]
    rpath = ":".join(map(str, libdirs))
    loader = final / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    programs = [root / "usr/bin" / c for c in CLIENTS] + [root / "usr/sbin" / f for f in DAEMONS.values()]
    for program in programs:
        if _elf(program):
            subprocess.run(["patchelf", "--set-interpreter", str(loader), "--force-rpath", "--set-rpath", rpath,
                            str(program)], check=True, capture_output=True)
    for library in (root / "usr/lib/x86_64-linux-gnu/slurm-wlm").glob("*.so*"):
        if _elf(library) and not library.is_symlink():
            subprocess.run(["patchelf", "--force-rpath", "--set-rpath", rpath, str(library)], check=True,
                           capture_output=True)


def _links(root: Path) -> None:
    """One link per program under its own name: Slurm tells slurmctld, slurmd and slurmstepd apart
    by the name they were started as (a slurmctld started as slurmctld-wlm refuses its certmgr
    plugin), and the distribution's own names go through /etc/alternatives of the host."""
    bin_dir = root / BIN
    bin_dir.mkdir()
    for client in CLIENTS:
        if (root / "usr/bin" / client).exists():
            (bin_dir / client).symlink_to(f"../usr/bin/{client}")
    for daemon, installed in DAEMONS.items():
        (bin_dir / daemon).symlink_to(f"../usr/sbin/{installed}")


def _check(release: Release, root: Path, final: Path) -> None:
    """The patched programs name the final tree's loader, so they are run through it explicitly here."""
    loader = root / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    libs = f"{root}/usr/lib/x86_64-linux-gnu/slurm-wlm:{root}/usr/lib/x86_64-linux-gnu"
    for program in ("slurmd", "slurmctld"):  # the clients read slurm.conf even for --version
        out = subprocess.run([str(loader), "--library-path", libs, str(root / BIN / program), "--version"],
                             capture_output=True, text=True)
        if not out.stdout.strip().endswith(tuple(f"{release.name}.{n}" for n in range(100))):
            raise ReleaseError(f"{program} -V said {(out.stdout + out.stderr).strip()!r}, not Slurm {release.name}")
