"""API keys; tenants' webhook URL from the operator

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 09:00:00

- `api_keys`: who may call the JSON API (issue 16). A key is shown once when it is created and
  only its SHA-256 is kept; a tenant's key reads that tenant, an operator's key (no tenant) reads
  every tenant and the cross-tenant routes. Revoked keys stay listed with the time.
- `tenants.webhook_url`: where staff notices and activities are POSTed. It was a key of the
  tenant's notification settings, which `tenant.settings_updated` events replace, so any producer
  on the bus could point the workers at any address. It comes from the operator's tenant file now.
  A URL found in stored settings is dropped, not moved (an event may have put it there):
  `notifier init`, which migrates and then loads the tenant files, sets the operator's.
"""
import sqlalchemy as sa
from alembic import op

import notifier.store.schema

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'api_keys',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('key_hash', sa.String(length=64), nullable=False),
        sa.Column('tenant_id', notifier.store.schema.Ident(128), nullable=True),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('created_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column('revoked_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
        sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash')),
    )
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('webhook_url', sa.String(length=2000), nullable=True))
    tenants = sa.table('tenants', sa.column('id', sa.String()), sa.column('settings', sa.JSON()))
    conn = op.get_bind()
    for row in conn.execute(sa.select(tenants.c.id, tenants.c.settings)).all():
        if isinstance(row.settings, dict) and 'webhook_url' in row.settings:
            kept = {k: v for k, v in row.settings.items() if k != 'webhook_url'}
            conn.execute(tenants.update().where(tenants.c.id == row.id).values(settings=kept))


def downgrade() -> None:
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.drop_column('webhook_url')
    op.drop_table('api_keys')
