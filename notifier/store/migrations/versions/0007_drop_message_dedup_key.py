"""drop messages.dedup_key

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 10:00:00

`dedup_key` spelled tenant/booking/key as one string. Since 0005 the unique key is the
(tenant_id, booking_id, key) index and nothing read the column, yet every planned message wrote
it (about a quarter of a message row, in the heap and the WAL).
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('dedup_key')


def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dedup_key', sa.String(length=500), nullable=True))
    op.execute("UPDATE messages SET dedup_key = tenant_id || '/' || booking_id || '/' || key")
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.alter_column('dedup_key', existing_type=sa.String(length=500), nullable=False)
