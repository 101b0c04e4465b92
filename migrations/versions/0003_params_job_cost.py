"""Tenants get an optional limit on a job's estimated forward passes.

`tenants.max_job_forward_passes` overrides `Settings.max_job_forward_passes` for one
tenant (`xmlx.jobs.cost.check_job_cost`); NULL, the default for every existing row,
means the setting applies.

Revision ID: 0003_params
Revises: 0002
Create Date: 2025-06-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003_params'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('tenants') as batch_op:
        batch_op.add_column(sa.Column('max_job_forward_passes', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tenants') as batch_op:
        batch_op.drop_column('max_job_forward_passes')
