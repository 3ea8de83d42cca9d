"""``render --from-db``: the inventory the agents registered renders the same files as the golden one."""
from __future__ import annotations

from pathlib import Path

from slurm_vgpu import render

from .cli_support import cli, fake_slurm, insert_inventory  # noqa: F401

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


def test_render_can_keep_the_features_slurm_reports_for_each_node(cli, fake_slurm, tmp_path):
    """Rendered NodeName lines stand for the site's own: --features-from-slurm copies each node's
    Features= (what --constraint selects) from sinfo."""
    insert_inventory(cli.engine)
    fake_slurm.set_nodes(["gpu01|idle|debug*||||nvlink,hbm3", "gpu02|idle|debug*||||(null)"])
    result = cli("render", "--from-db", "--features-from-slurm", "vgpu-slurm.conf")
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("NodeName=")}
    assert " Features=hbm3,nvlink " in lines["NodeName=gpu01"]
    assert "Features=" not in lines["NodeName=gpu02"]
    assert "Features=" not in cli("render", "--from-db", "vgpu-slurm.conf").stdout


def test_render_says_what_to_do_when_slurm_does_not_answer_for_features(cli, fake_slurm):
    insert_inventory(cli.engine)
    (fake_slurm.bin_dir / "sinfo").write_text("#!/bin/sh\necho 'slurm_load_partitions: Unable to contact slurm controller' >&2\nexit 1\n")
    result = cli("render", "--from-db", "--features-from-slurm")
    assert result.exit_code == 1
    assert "could not read the nodes' features from Slurm" in result.stderr and "add Features= by hand" in result.stderr
