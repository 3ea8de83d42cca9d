"""The rendered Slurm files for a fixed inventory (tests/golden/inventory) against reviewed copies.

A template change shows up here as a diff to review. To accept one, regenerate the copies and
review them with git diff:

    UPDATE_GOLDEN=1 pytest tests/unit/test_render_golden.py
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from slurm_vgpu import render
from slurm_vgpu.cli import main
from slurm_vgpu.cli.render_cmd import nodes_from_files

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
INVENTORY = tuple(sorted((GOLDEN / "inventory").glob("*.json")))
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def rendered() -> dict[str, str]:
    return render.site_files(nodes_from_files(INVENTORY), render.SiteSettings())


@pytest.mark.parametrize("name", list(render.SITE_FILES))
def test_rendered_file_matches_golden(name):
    text = rendered()[name]
    golden = GOLDEN / name
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"{golden} missing; create it with UPDATE_GOLDEN=1"
    assert text == golden.read_text(), f"{name} differs from {golden}; if intended, rerun with UPDATE_GOLDEN=1"


def test_render_command_writes_the_golden_files(tmp_path):
    args = ["render", "--output-dir", str(tmp_path)] + [a for p in INVENTORY for a in ("--inventory", str(p))]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for name in render.SITE_FILES:
        assert (tmp_path / name).read_text() == (GOLDEN / name).read_text(), name
    assert result.stdout == "", "with --output-dir, stdout carries no data"


def test_render_one_file_to_stdout_and_several_with_headers():
    inventory = [a for p in INVENTORY for a in ("--inventory", str(p))]
    one = CliRunner().invoke(main, ["render", "gres.conf", *inventory])
    assert one.exit_code == 0, one.output
    assert one.stdout == (GOLDEN / "gres.conf").read_text()
    both = CliRunner().invoke(main, ["render", "gres.conf", "job_submit.lua", *inventory])
    assert both.stdout.startswith("==> gres.conf <==\n")
    assert "\n==> job_submit.lua <==\n" in both.stdout


def test_a_config_file_that_does_not_exist_is_bad_input(tmp_path):
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "none.conf"), "render", "--inventory",
                                       str(INVENTORY[0])])
    assert result.exit_code == 2
    assert "none.conf does not exist" in result.stderr


def test_render_needs_exactly_one_inventory_source():
    result = CliRunner().invoke(main, ["render", "--from-db", "--inventory", str(INVENTORY[0])])
    assert result.exit_code == 2
    assert "one of --from-db, --from-nvml, --inventory" in result.stderr
