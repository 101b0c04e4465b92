"""API key scopes: `api_keys.scopes`.

Space-separated scopes (`read`, `submit`, `admin`; xmlx.security.SCOPES). Keys that
existed before this revision keep what they could do: `read submit`.

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


def downgrade() -> None:
    with op.batch_alter_table('api_keys') as batch_op:
        batch_op.drop_column('scopes')
