"""Datasets record their images folder; items get a (job_id, id) index.

`datasets.image_prefix` (the server-built storage prefix the manifest's keys are
relative to) and `datasets.images_prefix` (the folder as the client named it) replace
the `dataset.json` the API used to write next to the manifest copy. Both are nullable:
rows created before this revision keep NULL there, and `xmlx.dataset_images` falls back
to their `dataset.json` (object storage is out of a migration's reach, so no backfill).

`ix_items_job_id_id` serves a job's items in id order without a state filter (the
unfiltered gallery and API pages, the report); `(job_id, state, id)` cannot, so those
queries sorted the whole job.

Revision ID: 0002
Revises: 0001
Create Date: 2025-06-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch mode: SQLite cannot drop a column in place (downgrade), so keep both
    # directions in the same form; on PostgreSQL it is a plain ALTER TABLE.
    with op.batch_alter_table('datasets') as batch_op:
        batch_op.add_column(sa.Column('image_prefix', sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column('images_prefix', sa.String(length=1024), nullable=True))
    op.create_index(op.f('ix_items_job_id_id'), 'items', ['job_id', 'id'])


def downgrade() -> None:
    op.drop_index(op.f('ix_items_job_id_id'), table_name='items')
    with op.batch_alter_table('datasets') as batch_op:
        batch_op.drop_column('images_prefix')
        batch_op.drop_column('image_prefix')
