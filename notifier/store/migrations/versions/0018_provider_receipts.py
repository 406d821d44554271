"""provider receipts: each provider answer written down the instant it comes

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 01:50:00

A sender thread hands each answer of a provider that took a message (the SMTP server's 250,
Twilio's SID, ...) to its process's receipt writer, which commits it on a connection of its
own in one statement (with the provider account that took it), before the outcome's full record (attempt row, state, timeline, events)
is committed by the batch's recorder. A worker killed (or paused past its lease) between the
two leaves the receipt: the message's next claim finds it and records the copy instead of
sending a second one, also where the provider cannot be asked (SMTP). Rows are deleted after a
day by housekeeping (notifier/receipts.py).
"""
import sqlalchemy as sa
from alembic import op

import notifier.store.schema

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'receipts',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('claim_token', sa.Integer(), nullable=False),
        sa.Column('provider', sa.String(length=16), nullable=True),
        sa.Column('account', sa.String(length=64), nullable=True),
        sa.Column('provider_message_id', sa.String(length=200), nullable=True),
        sa.Column('provider_code', sa.String(length=64), nullable=True),
        sa.Column('received_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_receipts')),
    )
    with op.batch_alter_table('receipts', schema=None) as batch_op:
        batch_op.create_index('ix_receipts_message_id', ['message_id'], unique=False)
        batch_op.create_index('ix_receipts_received_at', ['received_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('receipts', schema=None) as batch_op:
        batch_op.drop_index('ix_receipts_received_at')
        batch_op.drop_index('ix_receipts_message_id')
    op.drop_table('receipts')
