"""customers answer by message

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 01:40:00

Inbound SMS and WhatsApp (issue 23; R3, R11, R14): a customer's STOP withdraws the channel
(`customers.opted_out`, kept apart from the consents the booking system sends), replies are
matched to customers by number (`ix_customers_phone`), and each inbound message is kept once
(`inbound_messages`: a webhook delivered again changes nothing) with what it meant.
"""
import sqlalchemy as sa
from alembic import op

from notifier.store.schema import Ident, UTCDateTime

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('opted_out', sa.JSON(), nullable=True))
        batch_op.create_index('ix_customers_phone', ['phone'], unique=False)
    op.create_table(
        'inbound_messages',
        sa.Column('id', _ID, primary_key=True, autoincrement=True),
        sa.Column('provider', sa.String(16), nullable=False),
        sa.Column('provider_message_id', Ident(200), nullable=False),
        sa.Column('channel', sa.String(16), nullable=False),
        sa.Column('tenant_id', Ident(128)),
        sa.Column('customer_id', Ident(128)),
        sa.Column('booking_id', Ident(128)),
        sa.Column('intent', sa.String(16)),
        sa.Column('outcome', sa.String(32), nullable=False),
        sa.Column('text', sa.Text()),
        sa.Column('received_at', UTCDateTime(), nullable=False),
        sa.UniqueConstraint('provider', 'provider_message_id', name='uq_inbound_provider_id'),
    )
    op.create_index('ix_inbound_messages_received_at', 'inbound_messages', ['received_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_inbound_messages_received_at', table_name='inbound_messages')
    op.drop_table('inbound_messages')
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_index('ix_customers_phone')
        batch_op.drop_column('opted_out')
