"""The dev cluster's generated files (slurm.conf, gres.conf, cgroup.conf, plugstack.conf,
job_submit.lua, slurm-vgpu.conf, prolog/epilog wrappers) for the default layout, against reviewed
copies in tests/golden/devcluster/. Paths that differ per checkout are written as <DIR>, <PYTHON>
and <PACKAGE>. To accept an intended change: UPDATE_GOLDEN=1 pytest tests/unit/test_devcluster_golden.py
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from slurm_vgpu_dev.cluster import Cluster, write_configs
from slurm_vgpu.resources import PACKAGE

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "devcluster"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    directory = tmp_path_factory.mktemp("devcluster")
    cluster = Cluster(dir=directory, port=16817, database_url="postgresql+psycopg://postgres@127.0.0.1:5432/golden")
    write_configs(cluster, cluster.nodes())
    files = {}
    for path in sorted(cluster.etc.rglob("*")):
        if path.is_file():
            text = path.read_text()
            for value, token in ((str(directory), "<DIR>"), (sys.executable, "<PYTHON>"), (str(PACKAGE), "<PACKAGE>")):
                text = text.replace(value, token)
            files[str(path.relative_to(cluster.etc))] = text
    return files


def test_the_dev_cluster_writes_every_golden_file(generated):
    expected = {str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*") if p.is_file()}
    if not UPDATE:
        assert set(generated) == expected


@pytest.mark.parametrize("name", ["slurm.conf", "gres.conf", "cgroup.conf", "plugstack.conf", "job_submit.lua",
                                  "slurm-vgpu.conf", "prolog.d/50-slurm-vgpu", "epilog.d/50-slurm-vgpu"])
def test_generated_file_matches_golden(generated, name):
    golden = GOLDEN / name
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(generated[name])
    assert golden.exists(), f"{golden} missing; create it with UPDATE_GOLDEN=1"
    assert generated[name] == golden.read_text(), f"{name} differs from {golden}; if intended, UPDATE_GOLDEN=1"
