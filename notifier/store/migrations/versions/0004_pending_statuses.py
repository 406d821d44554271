"""pending statuses

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 09:00:00

A provider may report a message's status before the worker has recorded the send (outcomes
are committed in chunks; a worker killed before its commit leaves the message to be found at
the provider later). Such reports are kept here and applied, forward only, when the send is
recorded; housekeeping drops those that never found their message.
"""
import sqlalchemy as sa
from alembic import op

import notifier.store.schema

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'pending_statuses',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('provider_message_id', sa.String(length=200), nullable=False),
        sa.Column('status', sa.String(length=32), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('received_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_pending_statuses')),
    )
    with op.batch_alter_table('pending_statuses', schema=None) as batch_op:
        batch_op.create_index('ix_pending_statuses_provider_id', ['provider_message_id'], unique=False)
        batch_op.create_index('ix_pending_statuses_received_at', ['received_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('pending_statuses', schema=None) as batch_op:
        batch_op.drop_index('ix_pending_statuses_received_at')
        batch_op.drop_index('ix_pending_statuses_provider_id')
    op.drop_table('pending_statuses')
