"""API key scopes (`api_keys.scopes`) and the request id of a job (`jobs.request_id`).

Space-separated scopes (`read`, `submit`, `admin`; xmlx.security.SCOPES). Keys that
existed before this revision keep what they could do: `read submit`. A job's request
id is the X-Request-ID of the API call that created it (NULL before this revision).

Revision ID: 0009
Revises: 0006
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys') as batch_op:
        batch_op.add_column(
            sa.Column('scopes', sa.String(length=64), nullable=False, server_default='read submit')
        )
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.add_column(sa.Column('request_id', sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.drop_column('request_id')
    with op.batch_alter_table('api_keys') as batch_op:
        batch_op.drop_column('scopes')
