"""The rule that takes an MPS control daemon for wedged: two questions in a row unanswered by the
same daemon; an answer, or another daemon in its place, starts the count again."""
from __future__ import annotations

import sys
import time

from slurm_vgpu.agent.health import MISSES, Probe, probe, tally, wedged
from slurm_vgpu.mps import MpsControl

FAKE = f"{sys.executable} -m slurm_vgpu_dev.fake_mps"


def test_a_daemon_is_wedged_at_its_second_miss_in_a_row():
    assert MISSES == 2
    misses = tally({}, [Probe("GPU-a", 100, False), Probe("GPU-b", 200, True)])
    assert misses == {("GPU-a", 100): 1} and wedged(misses) == []
    misses = tally(misses, [Probe("GPU-a", 100, False), Probe("GPU-b", 200, False)])
    assert wedged(misses) == [("GPU-a", 100)]


def test_a_slow_answer_between_misses_starts_the_count_again():
    misses = tally({}, [Probe("GPU-a", 100, False)])
    misses = tally(misses, [Probe("GPU-a", 100, True)])
    misses = tally(misses, [Probe("GPU-a", 100, False)])
    assert wedged(misses) == [] and misses == {("GPU-a", 100): 1}


def test_a_new_daemon_or_one_not_probed_starts_afresh():
    misses = tally({}, [Probe("GPU-a", 100, False), Probe("GPU-b", 200, False)])
    misses = tally(misses, [Probe("GPU-a", 101, False)])  # restarted; GPU-b's daemon ended
    assert misses == {("GPU-a", 101): 1} and wedged(misses) == []


def test_every_running_daemon_is_asked_at_once(tmp_path):
    """Three fake daemons, two of them hung: the probe waits one timeout, not one per hung daemon,
    and skips a GPU whose daemon does not run."""
    controls = [MpsControl(FAKE, f"GPU-{n}", tmp_path / n / "pipe", tmp_path / n / "log") for n in "abcd"]
    for control in controls[:3]:
        control.ensure_running()
    try:
        for control in controls[:2]:
            control.command("simulate_hang")
        started = time.monotonic()
        found = probe(controls, timeout=2)
        assert time.monotonic() - started < 3.8  # asked one after the other, it would take 4 s or more
        assert found == [Probe("GPU-a", controls[0].daemon_pid(), False), Probe("GPU-b", controls[1].daemon_pid(), False),
                         Probe("GPU-c", controls[2].daemon_pid(), True)]
    finally:
        controls[2].quit()
        for control in controls[:2]:
            if control.daemon_pid() is not None:
                control.kill(control.daemon_pid())
