"""bookings.not_planned, customers.phone_type

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 09:00:00

`bookings.not_planned` holds what planning left out for the booking and why, as last written
to its timeline, so a replan of the same state writes nothing again and the booking endpoint
shows it. `customers.phone_type` is the number's type (mobile, fixed_line, ...): SMS and
WhatsApp go only to numbers that can take them. Rows written before stay NULL; a NULL type is
worked out from the stored number when the customer is read.
"""
import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('bookings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('not_planned', sa.JSON(), nullable=True))
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('phone_type', sa.String(length=24), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_column('phone_type')
    with op.batch_alter_table('bookings', schema=None) as batch_op:
        batch_op.drop_column('not_planned')
