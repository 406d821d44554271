"""the customer's link: an opaque token per booking

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 12:00:00

Links were itsdangerous tokens carrying the tenant and booking ids in readable base64, one per
action and start time, 60 days valid. A booking now has one short opaque token (an HMAC of its
ids, notifier/links.py) that the page resolves here; dispatch records it before the first
message carrying it leaves.
"""
import sqlalchemy as sa
from alembic import op

import notifier.store.schema

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def _ident(length: int) -> sa.types.TypeEngine:
    return sa.String(length=length).with_variant(sa.String(length=length, collation='C'), 'postgresql')


def upgrade() -> None:
    op.create_table(
        'links',
        sa.Column('token', _ident(32), nullable=False),
        sa.Column('tenant_id', _ident(128), nullable=False),
        sa.Column('booking_id', _ident(128), nullable=False),
        sa.Column('created_at', notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('token', name=op.f('pk_links')),
    )


def downgrade() -> None:
    op.drop_table('links')
