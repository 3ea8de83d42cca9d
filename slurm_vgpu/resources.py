"""The non-Python parts the package carries (templates, migrations, the SPANK plugin's sources),
found beside the modules whether slurm-vgpu runs from a checkout or from an installed wheel."""
from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
SLURM_TEMPLATES = PACKAGE / "slurm_templates"
MIGRATIONS = PACKAGE / "db" / "migrations"
SPANK = PACKAGE / "spank"
