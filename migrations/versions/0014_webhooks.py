"""Webhooks: `jobs.callback_url`, a tenant's `webhook_settings`, the
`webhook_deliveries` outbox (one row per job final state, unique per job and event).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.add_column(sa.Column('callback_url', sa.String(length=2048), nullable=True))
    op.create_table(
        'webhook_settings',
        sa.Column('tenant_id', sa.String(length=40), nullable=False),
        sa.Column('url', sa.String(length=2048), nullable=True),
        sa.Column('secret', sa.String(length=128), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ['tenant_id'], ['tenants.id'],
            name=op.f('fk_webhook_settings_tenant_id_tenants'), ondelete='CASCADE',
        ),  # fmt: skip
        sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_webhook_settings')),
    )
    op.create_table(
        'webhook_deliveries',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('job_id', sa.String(length=40), nullable=False),
        sa.Column('tenant_id', sa.String(length=40), nullable=False),
        sa.Column('event', sa.String(length=40), nullable=False),
        sa.Column('url', sa.String(length=2048), nullable=False),
        sa.Column('payload', sa.JSON(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('last_status', sa.Integer(), nullable=True),
        sa.Column('last_error', sa.String(length=64), nullable=True),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('lease_owner', sa.String(length=200), nullable=True),
        sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ['job_id'], ['jobs.id'],
            name=op.f('fk_webhook_deliveries_job_id_jobs'), ondelete='CASCADE',
        ),  # fmt: skip
        sa.ForeignKeyConstraint(
            ['tenant_id'], ['tenants.id'],
            name=op.f('fk_webhook_deliveries_tenant_id_tenants'), ondelete='CASCADE',
        ),  # fmt: skip
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries')),
        sa.UniqueConstraint('job_id', 'event', name=op.f('uq_webhook_deliveries_job_id_event')),
    )
    op.create_index(
        op.f('ix_webhook_deliveries_state_next_attempt_at'),
        'webhook_deliveries', ['state', 'next_attempt_at'],
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index(
        op.f('ix_webhook_deliveries_state_next_attempt_at'), table_name='webhook_deliveries'
    )
    op.drop_table('webhook_deliveries')
    op.drop_table('webhook_settings')
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.drop_column('callback_url')
