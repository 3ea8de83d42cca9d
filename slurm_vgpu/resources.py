"""Where the non-Python parts of a source checkout live (templates, migrations, the SPANK plugin).

slurm-vgpu is installed from a checkout (``pip install -e``, as ansible/ does), so these stay next to
the package instead of being copied into it.
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(os.environ.get("SLURM_VGPU_SOURCE", Path(__file__).resolve().parents[1]))
GRES_TEMPLATES = ROOT / "gres"
MIGRATIONS = ROOT / "db" / "migrations"
SPANK = ROOT / "spank"
