"""Fair dispatch and transient retries: job priority, last service time, chunk retries.

`jobs.priority` (low / normal / high; existing rows are `normal`) orders a tenant's own
jobs; `jobs.served_at` (NULL: never served) lets the dispatcher serve the tenant served
least recently; `chunks.retries` counts transient failures, which no longer spend
`chunks.attempts`. `ix_chunks_job_id_state_seq` finds a job's next queued chunk without
scanning its finished ones.

Revision ID: 0005
Revises: 0004
Create Date: 2025-06-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.add_column(
            sa.Column('priority', sa.String(length=8), server_default='normal', nullable=False)
        )
        batch_op.add_column(sa.Column('served_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('chunks') as batch_op:
        batch_op.add_column(sa.Column('retries', sa.Integer(), server_default='0', nullable=False))
    op.create_index(
        op.f('ix_chunks_job_id_state_seq'), 'chunks', ['job_id', 'state', 'seq']
    )


def downgrade() -> None:
    op.drop_index(op.f('ix_chunks_job_id_state_seq'), table_name='chunks')
    with op.batch_alter_table('chunks') as batch_op:
        batch_op.drop_column('retries')
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.drop_column('served_at')
        batch_op.drop_column('priority')
