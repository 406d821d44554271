"""message stamp

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 09:00:00

A message's links and calendar card are stamped with its due time when it is first claimed
for sending (`stamped_at`), and keep that stamp when a retry moves `due_at`: every attempt
renders the same text, which is what lets dispatch recognise the provider's copy of an
attempt whose answer was lost (notifier/dispatch.py).
"""
import sqlalchemy as sa
from alembic import op

import notifier.store.schema

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stamped_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('stamped_at')
