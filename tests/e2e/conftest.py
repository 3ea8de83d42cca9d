"""What every e2e test shares beyond the cluster fixtures of tests/conftest.py."""
from __future__ import annotations

import shutil

import pytest

from slurm_vgpu_dev import cluster as devcluster

from ..conftest import TEST_PORT, cluster_dir, have_slurm


@pytest.fixture(scope="session", autouse=True)
def munge():
    """One munged for the whole run, started here when none works. A dev cluster that starts munge
    stops it when it goes down, and e2e modules bring clusters up and down in a different order
    than they use them: a module's cluster stopped munge under the session's (seen: sbatch failed
    with "Munge encode failed" after test_placement's module cluster went down)."""
    if not have_slurm():
        yield
        return
    holder = devcluster.Cluster(dir=cluster_dir("munge"), port=TEST_PORT)
    devcluster.start_munge(holder)
    yield
    devcluster.down(holder)
    shutil.rmtree(holder.dir, ignore_errors=True)
