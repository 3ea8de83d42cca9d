"""The contract under faults, CI-sized: about 100 vgpu jobs of 3 users and 3 classes while the
placement daemon, the node agents, slurmctld and the cluster's database are killed and restarted at
random (slurm_vgpu_dev/chaos.py says how each is checked). bench/chaos runs the same at any size."""
from __future__ import annotations

import pytest

from slurm_vgpu_dev.chaos import Chaos, ensure_users

from ..conftest import TEST_PORT, own_cluster

# Left out of a plain pytest run for its length; ./scripts/test (CI) runs it on 26.05. Run it on
# any release with: ./scripts/test --slurm 22.05 -m chaos tests/e2e/test_chaos.py
pytestmark = [pytest.mark.e2e, pytest.mark.chaos]


def test_no_gpu_overfills_or_mixes_users_and_no_job_is_lost_under_faults():
    with own_cluster("chaos", open(_default_layout()).read(), TEST_PORT + 80) as cluster:
        report = Chaos(cluster, ensure_users(3), seed=7).run(jobs=100, submit_over_s=120, fault_every_s=6,
                                                              timeout_s=420)
    text = "\n".join(report.lines())
    assert report.faults["placement"] and report.faults["agent"] and report.faults["slurmctld"] \
        and report.faults["postgres"], text
    assert not report.over_100 and not report.user_mixes, text
    assert not report.lost and not report.ran_without_slice and not report.unfinished, text
    assert report.completed_with_slice + report.ended_with_reason + len(report.lost_by_slurmctld) \
        + len(report.rolled_back) == report.jobs, text


def _default_layout():
    from slurm_vgpu_dev.layout import DEFAULT_LAYOUT

    return DEFAULT_LAYOUT
