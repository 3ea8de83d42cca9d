"""The Ansible role refuses what slurm-vgpu would refuse in slurm_vgpu_conf_extra before it changes
anything, with slurm-vgpu's own words (its parser, run from the checkout on the playbook's machine)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..unit.test_ansible_lint import ANSIBLE_DIR, run, tool

PLAY = """\
- name: Validate
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Validate the inputs
      ansible.builtin.import_role:
        name: slurm_vgpu
        tasks_from: validate
"""


def validate(tmp_path: Path, extra: object):
    (tmp_path / "play.yml").write_text(PLAY)
    (tmp_path / "vars.json").write_text(json.dumps({
        "ansible_python_interpreter": sys.executable, "slurm_vgpu_checkout": str(ANSIBLE_DIR.parent),
        "slurm_vgpu_manage_services": False, "slurm_vgpu_db_allow_empty_passwords": True,
        "slurm_vgpu_conf_extra": extra}))
    return run(tool("ansible-playbook"), "-i", "localhost,", "-c", "local", str(tmp_path / "play.yml"),
               "-e", f"@{tmp_path / 'vars.json'}")


def test_an_unknown_extra_key_is_refused_with_the_nearest_key(tmp_path):
    result = validate(tmp_path, {"HeartbeatTimeout": 30, "SloGaurd": False})
    assert result.returncode == 2, result.stdout + result.stderr
    assert '"msg": "slurm_vgpu_conf_extra: unknown key \'SloGaurd\'; did you mean \'SloGuard\'?"' in result.stdout


def test_a_bad_extra_value_is_refused_as_slurm_vgpu_says(tmp_path):
    result = validate(tmp_path, {"PlaceBatch": 0})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "slurm_vgpu_conf_extra: PlaceBatch: 0 decisions per write is too few; give 1 or more" in result.stdout


def test_known_extra_keys_pass(tmp_path):
    result = validate(tmp_path, {"HeartbeatTimeout": 30, "SloGuard": False, "Policy": "fgd"})
    assert result.returncode == 0, result.stdout + result.stderr
