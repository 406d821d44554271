"""tenants: message events and sender identity; messages: operators' resends and withdrawals

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 14:00:00

`tenants.message_events` is the tenant's opt-in to `message.sent`, `message.delivered`,
`message.read`, `message.failed` and `message.withdrawn` on the outbound queue;
`tenants.sender` holds its own `mail_from`, `reply_to` and SMS sender (NULL: the global
settings). `messages.by` names the operator who made (a resend) or withdrew a message by hand:
planning leaves such a message alone. `messages.resend_of` is the failed message a resend repeats.
"""
import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('message_events', sa.Boolean(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('sender', sa.JSON(), nullable=True))
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('by', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('resend_of', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('resend_of')
        batch_op.drop_column('by')
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.drop_column('sender')
        batch_op.drop_column('message_events')
