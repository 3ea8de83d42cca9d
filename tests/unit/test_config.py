"""slurm-vgpu.conf: Slurm-style keys, and a bad value refused at load with its file, line and fix."""
from __future__ import annotations

import pytest

from slurm_vgpu.config import ConfigError, parse, render


def test_placement_keys_round_trip_through_render():
    config = parse("Policy=fgd\nWorkloadRefresh=60\nCycleInterval=0.5\nPlaceBatch=4\n")
    assert (config.policy, config.workload_refresh, config.cycle_interval, config.place_batch) == \
        ("fgd", 60.0, 0.5, 4)
    assert parse(render(config)) == config


def test_an_unknown_policy_is_refused_at_load_naming_the_line_and_the_choices():
    with pytest.raises(ConfigError, match=r"site.conf:2: Policy: 'tetris' is not a policy; choose one of "
                                          r"random, first-fit, best-fit, fgd, ours"):
        parse("CycleInterval=1\nPolicy=tetris\n", "site.conf")


def test_a_refresh_that_is_not_a_number_is_refused():
    with pytest.raises(ConfigError, match="site.conf:1: WorkloadRefresh: 'soon' is not valid"):
        parse("WorkloadRefresh=soon\n", "site.conf")


def test_a_place_batch_below_one_is_refused():
    with pytest.raises(ConfigError, match="site.conf:1: PlaceBatch: 0 decisions per write is too few; "
                                          "give 1 or more"):
        parse("PlaceBatch=0\n", "site.conf")
