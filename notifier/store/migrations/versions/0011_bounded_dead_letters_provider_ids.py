"""dead letters bounded; provider ids namespaced by provider

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 12:00:00

Issue 15:
- `dead_letters` kept whole bodies for ever (5,020 rows held 29 MB, one a million characters,
  personal data in them). A body is now kept up to 64 KB with the whole body's size and SHA-256
  (`body_bytes`, `body_sha256`), and housekeeping deletes dead letters past
  `retention_dead_letters_s` (an index on `received_at`). Stored bodies longer than 64 KB are cut
  here; their size and digest are not known any more and stay NULL (PostgreSQL computes them
  before cutting).
- A provider status callback matched its message by the provider's id alone, so a Twilio-signed
  callback carrying an email's Message-ID moved that email. Messages and pending status reports
  now carry the `provider` that issued the id (smtp, twilio, meta, webhook) and a callback only
  finds ids of its own provider. Existing ids take the provider their channel was sent through
  (WhatsApp ids that start with "wamid." came from Meta, the others from Twilio).
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

BODY_BYTES = 65536


def upgrade() -> None:
    with op.batch_alter_table('dead_letters', schema=None) as batch_op:
        batch_op.add_column(sa.Column('body_bytes', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('body_sha256', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_dead_letters_received_at', ['received_at'], unique=False)
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('provider', sa.String(length=16), nullable=True))
    with op.batch_alter_table('pending_statuses', schema=None) as batch_op:
        batch_op.add_column(sa.Column('provider', sa.String(length=16), nullable=True))
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("UPDATE dead_letters SET body_bytes = octet_length(body), "
                   "body_sha256 = encode(sha256(convert_to(body, 'UTF8')), 'hex')")
        op.execute(f"UPDATE dead_letters SET body = left(body, {BODY_BYTES // 4}) "
                   f"WHERE octet_length(body) > {BODY_BYTES}")
    else:
        op.execute(f"UPDATE dead_letters SET body = substr(body, 1, {BODY_BYTES // 4}) "
                   f"WHERE length(CAST(body AS BLOB)) > {BODY_BYTES}")
    op.execute("UPDATE messages SET provider = CASE channel WHEN 'email' THEN 'smtp' WHEN 'sms' THEN 'twilio' "
               "WHEN 'whatsapp' THEN (CASE WHEN provider_message_id LIKE 'wamid.%' THEN 'meta' ELSE 'twilio' END) "
               "ELSE 'webhook' END WHERE provider_message_id IS NOT NULL")
    op.execute("UPDATE pending_statuses SET provider = CASE WHEN provider_message_id LIKE 'wamid.%' THEN 'meta' "
               "ELSE 'twilio' END")


def downgrade() -> None:
    with op.batch_alter_table('pending_statuses', schema=None) as batch_op:
        batch_op.drop_column('provider')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('provider')
    with op.batch_alter_table('dead_letters', schema=None) as batch_op:
        batch_op.drop_index('ix_dead_letters_received_at')
        batch_op.drop_column('body_sha256')
        batch_op.drop_column('body_bytes')
