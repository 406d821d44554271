"""bookings: the late counter under its own name, when notifier received a booking, per-booking choices

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 14:00:00

- `orange_since` becomes `late_counter_since`: the orange marker of the requirements is the "late"
  marker lit with the follow-up message (`late_since`); this column is the late counter's (R16).
- `received_at`: when notifier first applied the booking. The late path (R16-R18) is for visits
  notifier knew of before they began; a booking received after its start is not late. Existing
  rows take their `created_at`.
- `send_card` and `reminders`: what the booking system chose for this booking when it was made
  (the appointment card by email, R22; reminders on or off, R15). `send_card` NULL: the default.
"""
import sqlalchemy as sa
from alembic import op

import notifier.store.schema

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('bookings', schema=None) as batch_op:
        batch_op.alter_column('orange_since', new_column_name='late_counter_since')
        batch_op.add_column(sa.Column('received_at', notifier.store.schema.UTCDateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('send_card', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('reminders', sa.Boolean(), nullable=False, server_default='1'))
    op.execute("UPDATE bookings SET received_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table('bookings', schema=None) as batch_op:
        batch_op.drop_column('reminders')
        batch_op.drop_column('send_card')
        batch_op.drop_column('received_at')
        batch_op.alter_column('late_counter_since', new_column_name='orange_since')
