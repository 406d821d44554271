"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-24 09:20:27.386546
"""
import sqlalchemy as sa
from alembic import op

import notifier.store.schema

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dead_letters',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('received_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
    sa.Column('source', sa.String(length=200), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('replayed_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dead_letters'))
    )
    op.create_table('held_events',
    sa.Column('event_id', sa.String(length=128), nullable=False),
    sa.Column('tenant_id', sa.String(length=128), nullable=False),
    sa.Column('aggregate', sa.String(length=200), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('held_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('event_id', name=op.f('pk_held_events'))
    )
    with op.batch_alter_table('held_events', schema=None) as batch_op:
        batch_op.create_index('ix_held_events_aggregate', ['tenant_id', 'aggregate', 'revision'], unique=False)
        batch_op.create_index('ix_held_events_held_at', ['held_at'], unique=False)

    op.create_table('outbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=128), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('created_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
    sa.Column('published_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox'))
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_unpublished', ['id'], unique=False, postgresql_where=sa.text('published_at IS NULL'), sqlite_where=sa.text('published_at IS NULL'))

    op.create_table('processed_events',
    sa.Column('event_id', sa.String(length=128), nullable=False),
    sa.Column('tenant_id', sa.String(length=128), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('aggregate', sa.String(length=200), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('processed_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('event_id', name=op.f('pk_processed_events'))
    )
    op.create_table('tenants',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('home_region', sa.String(length=2), nullable=False),
    sa.Column('language', sa.String(length=8), nullable=False),
    sa.Column('channels', sa.JSON(), nullable=False),
    sa.Column('company', sa.JSON(), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('revision', sa.Integer(), server_default='0', nullable=False),
    sa.Column('updated_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tenants'))
    )
    op.create_table('timeline',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=128), nullable=False),
    sa.Column('booking_id', sa.String(length=128), nullable=False),
    sa.Column('at', notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.Column('dedup_key', sa.String(length=300), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_timeline')),
    sa.UniqueConstraint('dedup_key', name=op.f('uq_timeline_dedup_key'))
    )
    with op.batch_alter_table('timeline', schema=None) as batch_op:
        batch_op.create_index('ix_timeline_booking', ['tenant_id', 'booking_id', 'at'], unique=False)

    op.create_table('customers',
    sa.Column('tenant_id', sa.String(length=128), nullable=False),
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('phone', sa.String(length=32), nullable=True),
    sa.Column('phone_error', sa.String(length=200), nullable=True),
    sa.Column('email', sa.String(length=254), nullable=True),
    sa.Column('language', sa.String(length=8), nullable=False),
    sa.Column('consents', sa.JSON(), nullable=False),
    sa.Column('privacy_accepted', sa.Boolean(), nullable=False),
    sa.Column('created_via_online_booking', sa.Boolean(), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('snapshot_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_customers_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('tenant_id', 'id', name=op.f('pk_customers'))
    )
    op.create_table('resources',
    sa.Column('tenant_id', sa.String(length=128), nullable=False),
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('type', sa.String(length=32), nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=True),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('revision', sa.Integer(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_resources_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('tenant_id', 'id', name=op.f('pk_resources'))
    )
    op.create_table('template_bundles',
    sa.Column('tenant_id', sa.String(length=128), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.Column('files', sa.JSON(), nullable=False),
    sa.Column('loaded_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_template_bundles_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('tenant_id', 'version', name=op.f('pk_template_bundles'))
    )
    op.create_table('bookings',
    sa.Column('tenant_id', sa.String(length=128), nullable=False),
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('customer_id', sa.String(length=128), nullable=False),
    sa.Column('resource_id', sa.String(length=128), nullable=False),
    sa.Column('starts_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ends_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
    sa.Column('scheduled_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('service', sa.String(length=200), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('cancelled_by', sa.String(length=16), nullable=True),
    sa.Column('cancelled_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=True),
    sa.Column('cancel_reason', sa.Text(), nullable=True),
    sa.Column('needs_approval', sa.Boolean(), server_default='0', nullable=False),
    sa.Column('approved_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=True),
    sa.Column('workflow_status', sa.JSON(), nullable=True),
    sa.Column('confirmed_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=True),
    sa.Column('visit_outcome', sa.String(length=16), nullable=True),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('red_since', notifier.store.schema.UTCDateTime(timezone=True), nullable=True),
    sa.Column('late_since', notifier.store.schema.UTCDateTime(timezone=True), nullable=True),
    sa.Column('orange_since', notifier.store.schema.UTCDateTime(timezone=True), nullable=True),
    sa.Column('released_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=True),
    sa.Column('next_check_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id', 'customer_id'], ['customers.tenant_id', 'customers.id'], name=op.f('fk_bookings_tenant_id_customers')),
    sa.ForeignKeyConstraint(['tenant_id', 'resource_id'], ['resources.tenant_id', 'resources.id'], name=op.f('fk_bookings_tenant_id_resources')),
    sa.PrimaryKeyConstraint('tenant_id', 'id', name=op.f('pk_bookings'))
    )
    with op.batch_alter_table('bookings', schema=None) as batch_op:
        batch_op.create_index('ix_bookings_customer', ['tenant_id', 'customer_id'], unique=False)
        batch_op.create_index('ix_bookings_next_check', ['next_check_at'], unique=False, postgresql_where=sa.text('next_check_at IS NOT NULL'), sqlite_where=sa.text('next_check_at IS NOT NULL'))
        batch_op.create_index('ix_bookings_resource', ['tenant_id', 'resource_id'], unique=False)

    op.create_table('messages',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=128), nullable=False),
    sa.Column('booking_id', sa.String(length=128), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('dedup_key', sa.String(length=500), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('recipient', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('due_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
    sa.Column('lease_until', notifier.store.schema.UTCDateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('provider_message_id', sa.String(length=200), nullable=True),
    sa.Column('sent_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('template_version', sa.String(length=64), nullable=True),
    sa.Column('created_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id', 'booking_id'], ['bookings.tenant_id', 'bookings.id'], name=op.f('fk_messages_tenant_id_bookings')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_messages')),
    sa.UniqueConstraint('dedup_key', name=op.f('uq_messages_dedup_key'))
    )
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.create_index('ix_messages_booking', ['tenant_id', 'booking_id'], unique=False)
        batch_op.create_index('ix_messages_due', ['due_at'], unique=False, postgresql_where=sa.text("state = 'planned'"), sqlite_where=sa.text("state = 'planned'"))
        batch_op.create_index('ix_messages_lease', ['lease_until'], unique=False, postgresql_where=sa.text("state IN ('queued', 'sending')"), sqlite_where=sa.text("state IN ('queued', 'sending')"))
        batch_op.create_index('ix_messages_provider_id', ['provider_message_id'], unique=False)

    op.create_table('send_attempts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('started_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('provider_code', sa.String(length=64), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_send_attempts_message_id_messages')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_send_attempts'))
    )
    with op.batch_alter_table('send_attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_send_attempts_message_id'), ['message_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('send_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_send_attempts_message_id'))

    op.drop_table('send_attempts')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_provider_id')
        batch_op.drop_index('ix_messages_lease', postgresql_where=sa.text("state IN ('queued', 'sending')"), sqlite_where=sa.text("state IN ('queued', 'sending')"))
        batch_op.drop_index('ix_messages_due', postgresql_where=sa.text("state = 'planned'"), sqlite_where=sa.text("state = 'planned'"))
        batch_op.drop_index('ix_messages_booking')

    op.drop_table('messages')
    with op.batch_alter_table('bookings', schema=None) as batch_op:
        batch_op.drop_index('ix_bookings_resource')
        batch_op.drop_index('ix_bookings_next_check', postgresql_where=sa.text('next_check_at IS NOT NULL'), sqlite_where=sa.text('next_check_at IS NOT NULL'))
        batch_op.drop_index('ix_bookings_customer')

    op.drop_table('bookings')
    op.drop_table('template_bundles')
    op.drop_table('resources')
    op.drop_table('customers')
    with op.batch_alter_table('timeline', schema=None) as batch_op:
        batch_op.drop_index('ix_timeline_booking')

    op.drop_table('timeline')
    op.drop_table('tenants')
    op.drop_table('processed_events')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_unpublished', postgresql_where=sa.text('published_at IS NULL'), sqlite_where=sa.text('published_at IS NULL'))

    op.drop_table('outbox')
    with op.batch_alter_table('held_events', schema=None) as batch_op:
        batch_op.drop_index('ix_held_events_held_at')
        batch_op.drop_index('ix_held_events_aggregate')

    op.drop_table('held_events')
    op.drop_table('dead_letters')
