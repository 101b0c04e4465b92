"""Big batches are prepared in the background: `jobs.source` and `jobs.prepared_at`.

A job submitted by prefix or manifest starts in the new state `preparing` (states are
plain strings, so the state itself needs no DDL). `source` records where its items
come from, so a preparation whose task was lost can be resumed by another one;
`prepared_at` is when its last item went in and it became `queued`.

Revision ID: 0004
Revises: 0003_params
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003_params'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.add_column(sa.Column('source', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('prepared_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.drop_column('prepared_at')
        batch_op.drop_column('source')
