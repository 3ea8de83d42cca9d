"""Alembic environment: the URL comes from slurm_vgpu.db.engine (SLURM_VGPU_DATABASE_URL)."""
from alembic import context
from sqlalchemy import engine_from_config, pool

from slurm_vgpu.db.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, compare_server_default=True)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
