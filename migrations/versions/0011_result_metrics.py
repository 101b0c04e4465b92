"""A job's running sums of its results' metrics: `jobs.result_metrics`.

`{name: {"sum": s, "count": n}}` over the job's succeeded items (each item counts the
mean over its explanations), updated in the transaction that records the items
(`xmlx.jobs.results`); the API shows the means (`JobOut.metrics`). NULL for jobs
whose results carry no metrics and for rows written before this revision.

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.add_column(sa.Column('result_metrics', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.drop_column('result_metrics')
