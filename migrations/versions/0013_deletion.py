"""Deletion, retention and quotas (issue 16 item 2).

Soft delete: `deleted_at` on jobs, models and datasets (a deleted row is 404 at once;
`xmlx.purge` removes it and its objects later). `purges` records each background
removal with its stage and cursor, so a killed purge resumes. `tenant_usage` counts the
bytes a tenant keeps in the store; tenants gain `retention_days`, `max_stored_bytes`
and `max_items_in_flight` (NULL: no limit). `jobs.orphans_checked_at` marks finished
jobs whose folder the orphan sweep has checked (NULL: due, old jobs included).

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0013'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table('tenants') as batch_op:
        batch_op.add_column(sa.Column('retention_days', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('max_stored_bytes', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('max_items_in_flight', sa.BigInteger(), nullable=True))
    for table in ('datasets', 'models'):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column('deleted_at', _WHEN, nullable=True))
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.add_column(sa.Column('deleted_at', _WHEN, nullable=True))
        batch_op.add_column(sa.Column('orphans_checked_at', _WHEN, nullable=True))
    op.create_table(
        'purges',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('tenant_id', sa.String(length=40), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('target', sa.String(length=1024), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('stage', sa.String(length=16), nullable=False),
        sa.Column('cursor', sa.String(length=1024), nullable=True),
        sa.Column('objects_deleted', sa.BigInteger(), nullable=False),
        sa.Column('bytes_freed', sa.BigInteger(), nullable=False),
        sa.Column('rows_deleted', sa.BigInteger(), nullable=False),
        sa.Column('lease_until', _WHEN, nullable=True),
        sa.Column('created_at', _WHEN, nullable=False),
        sa.Column('updated_at', _WHEN, nullable=False),
        sa.Column('finished_at', _WHEN, nullable=True),
        sa.ForeignKeyConstraint(
            ['tenant_id'], ['tenants.id'], name=op.f('fk_purges_tenant_id_tenants'),
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_purges')),
    )
    op.create_index(op.f('ix_purges_state_updated_at'), 'purges', ['state', 'updated_at'])
    op.create_index(
        op.f('ix_purges_tenant_id_kind_target'), 'purges', ['tenant_id', 'kind', 'target']
    )
    op.create_table(
        'tenant_usage',
        sa.Column('tenant_id', sa.String(length=40), nullable=False),
        sa.Column('stored_bytes', sa.BigInteger(), nullable=False),
        sa.Column('counted_at', _WHEN, nullable=True),
        sa.ForeignKeyConstraint(
            ['tenant_id'], ['tenants.id'], name=op.f('fk_tenant_usage_tenant_id_tenants'),
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_tenant_usage')),
    )
    # Every tenant has its row (the recount sets the real figure on its first sweep).
    op.execute(
        "INSERT INTO tenant_usage (tenant_id, stored_bytes, counted_at) "
        "SELECT id, 0, NULL FROM tenants"
    )


def downgrade() -> None:
    op.drop_table('tenant_usage')
    op.drop_index(op.f('ix_purges_tenant_id_kind_target'), table_name='purges')
    op.drop_index(op.f('ix_purges_state_updated_at'), table_name='purges')
    op.drop_table('purges')
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.drop_column('orphans_checked_at')
        batch_op.drop_column('deleted_at')
    for table in ('models', 'datasets'):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column('deleted_at')
    with op.batch_alter_table('tenants') as batch_op:
        batch_op.drop_column('max_items_in_flight')
        batch_op.drop_column('max_stored_bytes')
        batch_op.drop_column('retention_days')
