"""housekeeping indexes

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 09:00:00

Old processed event ids, published outbox rows and send attempts are found by time, so deleting
them past their retention costs what is deleted, not the table. The sweeps' own questions were
index-driven in 0001 already (ix_messages_due, ix_messages_lease, ix_bookings_next_check);
tests/integration/test_sweep_plans.py checks all of them on PostgreSQL.
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('processed_events', schema=None) as batch_op:
        batch_op.create_index('ix_processed_events_processed_at', ['processed_at'], unique=False)
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_published', ['published_at'], unique=False,
                              postgresql_where=sa.text('published_at IS NOT NULL'),
                              sqlite_where=sa.text('published_at IS NOT NULL'))
    with op.batch_alter_table('send_attempts', schema=None) as batch_op:
        batch_op.create_index('ix_send_attempts_started_at', ['started_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('send_attempts', schema=None) as batch_op:
        batch_op.drop_index('ix_send_attempts_started_at')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_published', postgresql_where=sa.text('published_at IS NOT NULL'),
                            sqlite_where=sa.text('published_at IS NOT NULL'))
    with op.batch_alter_table('processed_events', schema=None) as batch_op:
        batch_op.drop_index('ix_processed_events_processed_at')
