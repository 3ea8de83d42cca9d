"""The Ansible roles pass ansible-lint's production profile and ansible-playbook --syntax-check."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ANSIBLE_DIR = Path(__file__).resolve().parents[2] / "ansible"


def tool(name: str) -> str:
    """ansible-playbook and ansible-lint from the test extra, beside this interpreter."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]' (scripts/setup.sh does)")
    return found


def run(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1", "PY_COLORS": "0"}
    # ansible-lint puts its interpreter's bin/ first on PATH; do it here so it does not warn.
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return subprocess.run(argv, cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=300)


def test_ansible_lint_production_profile_is_clean():
    result = run(tool("ansible-lint"))
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-6000:]
    assert "Profile 'production' was required, and it passed" in text, text[-2000:]


def test_site_playbook_syntax_check():
    result = run(tool("ansible-playbook"), "--syntax-check", "-i", "inventory/example/hosts.yml", "site.yml")
    assert result.returncode == 0, result.stdout + result.stderr
