"""The placement daemon's loop against a real Postgres: a cycle that fails for a reason nobody
foresaw is logged and retried, not the end of placement for the whole cluster."""
from __future__ import annotations

import logging

from slurm_vgpu.config import Config
from slurm_vgpu.placement import daemon


def test_an_unexpected_error_in_a_cycle_is_logged_and_the_daemon_goes_on(database_url, monkeypatch, caplog):
    calls = []

    def broken_cycle(*args, **kwargs):
        calls.append(1)
        raise ValueError("a bug in reconcile")

    monkeypatch.setattr(daemon, "run_cycle", broken_cycle)
    with caplog.at_level(logging.ERROR, logger="slurm_vgpu.placement"):
        daemon.run(Config(database_url=database_url), once=True)
    assert calls == [1]
    assert "cycle failed unexpectedly" in caplog.text and "a bug in reconcile" in caplog.text
