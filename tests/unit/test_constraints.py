"""The placement's reading of Slurm's --constraint for a job of one node (which nodes Slurm would
start it on); tests/e2e/test_constraints.py holds it to Slurm's own on each release."""
from __future__ import annotations

import pytest

from slurm_vgpu.adapters.features import ConstraintError, satisfies
from slurm_vgpu.adapters.slurm import Node, _job

IB, NVME_BIG = frozenset({"ib"}), frozenset({"nvme", "big"})


@pytest.mark.parametrize("expression, on_ib, on_nvme_big", [
    ("", True, True),
    ("ib", True, False),
    ("nvme&big", False, True),
    ("ib|nvme", True, True),
    ("ib|nvme&big", False, True),  # left to right, as Slurm: (ib|nvme)&big
    ("ib|(nvme&big)", True, True),
])
def test_a_constraint_is_met_by_the_nodes_slurm_would_choose(expression, on_ib, on_nvme_big):
    assert (satisfies(expression, IB), satisfies(expression, NVME_BIG)) == (on_ib, on_nvme_big)


@pytest.mark.parametrize("expression", ["ib&", "(ib", "ib)", "&ib", "ib||nvme", "i b", "ib%2",
                                        "[ib|nvme]", "ib*2", "!ib"])  # left to Slurm
def test_a_constraint_this_reading_cannot_follow_says_where(expression):
    with pytest.raises(ConstraintError):
        satisfies(expression, IB)


def test_a_job_may_use_only_the_nodes_whose_features_meet_its_constraint():
    nodes = {"a1": Node("idle", frozenset({"gpu"}), features=IB),
             "a2": Node("idle", frozenset({"gpu"}), features=NVME_BIG),
             "a3": Node("idle", frozenset({"gpu"}))}
    job = _job({"job_id": 1, "partition": "gpu", "features": "ib|big"})
    assert job.allowed_nodes(nodes) == {"a1", "a2"}
    assert _job({"job_id": 2, "partition": "gpu"}).allowed_nodes(nodes) == {"a1", "a2", "a3"}
    # a constraint Slurm took at submit but this reading does not follow narrows nothing
    assert _job({"job_id": 3, "partition": "gpu", "features": "[ib|big]"}).allowed_nodes(nodes) == {"a1", "a2", "a3"}
