"""Live training progress: `jobs.training_progress`.

A training job's stage, epoch / epochs, last losses, ETA and per-epoch history (keyed
by stage and epoch, so a resumed training appends to its curve), written by the
chunk's lease holder at most about once a second (`xmlx.jobs.progress`). NULL for
other jobs and for rows written before this revision.

Revision ID: 0006
Revises: 0005
Create Date: 2025-06-12
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.add_column(sa.Column('training_progress', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.drop_column('training_progress')
