"""status reports that name their message

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 23:30:00

Twilio and Meta status callbacks carry a reference of ours to the message they report on (the
StatusCallback URL's `message` parameter; Meta's `biz_opaque_callback_data`). A report whose
provider id no message has yet keeps that reference (`pending_statuses.message_id`): when the
provider took a message but its answer never reached us (a timeout, a worker killed or paused
before the commit), dispatch finds the provider's copy by its reports and records it instead of
sending a second one (notifier/dispatch.py).
"""
import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('pending_statuses', schema=None) as batch_op:
        batch_op.add_column(sa.Column('message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                                      nullable=True))
        batch_op.create_index('ix_pending_statuses_message_id', ['message_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('pending_statuses', schema=None) as batch_op:
        batch_op.drop_index('ix_pending_statuses_message_id')
        batch_op.drop_column('message_id')
