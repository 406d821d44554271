"""identifiers compared byte by byte; attempts no longer a foreign key of messages

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 12:00:00

Two costs of ingesting an event, both in PostgreSQL (`bench ingest`):
- Identifier columns (tenant, booking, customer, resource and event ids, planning keys, provider
  ids) took the database's collation, so every index probe and insert on them compared with the
  locale's strcoll. They take the "C" collation now (byte order, memcmp), whatever the
  database's default; SQLite compares bytes already. Indexes on them are rebuilt.
- A withdrawn message that was never attempted is deleted instead of kept as `withdrawn`, and the
  foreign key from `send_attempts` made each delete run a query on that table. Attempts are
  written only for attempted messages, which are never deleted, so the key is dropped.
"""
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

IDENTIFIERS = {  # table: (column, length) of each identifier column
    'tenants': [('id', 128)],
    'resources': [('tenant_id', 128), ('id', 128)],
    'customers': [('tenant_id', 128), ('id', 128)],
    'bookings': [('tenant_id', 128), ('id', 128), ('customer_id', 128), ('resource_id', 128)],
    'messages': [('tenant_id', 128), ('booking_id', 128), ('key', 200), ('provider_message_id', 200)],
    'timeline': [('tenant_id', 128), ('booking_id', 128), ('dedup_key', 300)],
    'processed_events': [('event_id', 128), ('tenant_id', 128), ('aggregate', 200)],
    'held_events': [('event_id', 128), ('tenant_id', 128), ('aggregate', 200)],
    'template_bundles': [('tenant_id', 128), ('version', 64)],
    'pending_statuses': [('provider_message_id', 200)],
    'outbox': [('tenant_id', 128)],
}
ATTEMPT_FK = 'fk_send_attempts_message_id_messages'


def _collate(collation: str) -> None:
    """One ALTER TABLE per table (PostgreSQL rebuilds each index and foreign key once)."""
    for table, columns in IDENTIFIERS.items():
        changes = ", ".join(f'ALTER COLUMN "{column}" TYPE varchar({length}) COLLATE "{collation}"'
                            for column, length in columns)
        op.execute(f'ALTER TABLE "{table}" {changes}')


def upgrade() -> None:
    with op.batch_alter_table('send_attempts', schema=None) as batch_op:
        batch_op.drop_constraint(ATTEMPT_FK, type_='foreignkey')
    if op.get_bind().dialect.name == 'postgresql':
        _collate('C')


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        _collate('default')
    with op.batch_alter_table('send_attempts', schema=None) as batch_op:
        batch_op.create_foreign_key(ATTEMPT_FK, 'messages', ['message_id'], ['id'])
