"""plan changes on event rows

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 09:00:00

An event's timeline entry and the messages it planned or withdrew were two rows: the event's,
and a `plan.changed` row after it. The plan changes now ride on the event's row, in a `plan`
column (JSON, the shape `plan.changed` rows keep), so an ingested event writes one timeline
row instead of two. Rows written before stay as they are; readers expand both.
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('timeline', schema=None) as batch_op:
        batch_op.add_column(sa.Column('plan', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('timeline', schema=None) as batch_op:
        batch_op.drop_column('plan')
