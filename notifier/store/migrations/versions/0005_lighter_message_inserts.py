"""lighter message inserts

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 09:00:00

Every event plans several messages, so what each message insert costs bounds ingestion.
Two costs went: the foreign key to bookings (a trigger and an index probe per row; messages
are written only with their booking, and neither is deleted) and the entry every planned
message made in the provider-id index (only sent messages have an id to look up).
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_constraint('fk_messages_tenant_id_bookings', type_='foreignkey')
        batch_op.drop_index('ix_messages_provider_id')
        batch_op.create_index('ix_messages_provider_id', ['provider_message_id'], unique=False,
                              postgresql_where=sa.text('provider_message_id IS NOT NULL'),
                              sqlite_where=sa.text('provider_message_id IS NOT NULL'))


def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_provider_id')
        batch_op.create_index('ix_messages_provider_id', ['provider_message_id'], unique=False)
        batch_op.create_foreign_key('fk_messages_tenant_id_bookings', 'bookings', ['tenant_id', 'booking_id'],
                                    ['tenant_id', 'id'])
