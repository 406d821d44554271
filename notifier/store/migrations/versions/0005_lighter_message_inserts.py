"""lighter message inserts

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 09:00:00

Every event plans several messages, so what each message insert costs bounds ingestion.
Three costs went: the foreign key to bookings (a trigger and an index probe per row; messages
are written only with their booking, and neither is deleted); the entry every planned
message made in the provider-id index (only sent messages have an id to look up); and one
of two indexes that said the same thing: the unique `dedup_key` (tenant/booking/key as one
string) and the (tenant, booking) index are one unique index on (tenant, booking, key) now,
which finds a booking's messages as well.
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
        batch_op.drop_constraint('uq_messages_dedup_key', type_='unique')
        batch_op.drop_index('ix_messages_booking')
        batch_op.create_unique_constraint('uq_messages_booking_key', ['tenant_id', 'booking_id', 'key'])
        batch_op.drop_index('ix_messages_provider_id')
        batch_op.create_index('ix_messages_provider_id', ['provider_message_id'], unique=False,
                              postgresql_where=sa.text('provider_message_id IS NOT NULL'),
                              sqlite_where=sa.text('provider_message_id IS NOT NULL'))


def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_constraint('uq_messages_booking_key', type_='unique')
        batch_op.create_index('ix_messages_booking', ['tenant_id', 'booking_id'], unique=False)
        batch_op.create_unique_constraint('uq_messages_dedup_key', ['dedup_key'])
        batch_op.drop_index('ix_messages_provider_id')
        batch_op.create_index('ix_messages_provider_id', ['provider_message_id'], unique=False)
        batch_op.create_foreign_key('fk_messages_tenant_id_bookings', 'bookings', ['tenant_id', 'booking_id'],
                                    ['tenant_id', 'id'])
