"""``render --from-db``: the inventory the agents registered renders the same files as the golden one."""
from __future__ import annotations

from pathlib import Path

from slurm_vgpu import render

from .cli_support import cli, insert_inventory  # noqa: F401

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def test_render_from_db_matches_the_golden_files(cli, tmp_path):
    insert_inventory(cli.engine)  # the same GPUs as tests/golden/inventory
    result = cli("render", "--from-db", "--output-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    for name in render.SITE_FILES:
        assert (tmp_path / name).read_text() == (GOLDEN / name).read_text(), name


def test_render_from_an_empty_database_fails_with_a_hint(cli):
    result = cli("render", "--from-db")
    assert result.exit_code == 1
    assert "no GPUs" in result.stderr and "node agent" in result.stderr
