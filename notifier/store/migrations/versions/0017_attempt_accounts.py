"""the provider account of each send attempt

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 01:50:00

A channel may list several provider accounts (two SMTP relays; Twilio and a second provider on
Twilio's API), and a down one is skipped (notifier/failover.py). Each attempt records the
account its call went to: an attempt whose answer never came leaves the message in doubt at that
account, which is asked about it before any account sends it again.
"""
import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('send_attempts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('account', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('send_attempts', schema=None) as batch_op:
        batch_op.drop_column('account')
