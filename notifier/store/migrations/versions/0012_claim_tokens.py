"""claim tokens

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 22:00:00

Each claim of a message for sending carries a fencing token (`messages.claim_token`, one more
with every claim): the worker that holds the claim extends its lease, and records its outcome,
only while the row still carries its token, so a worker that was paused past its lease cannot
renew, send under, or record over the claim of the worker that took the message after it
(notifier/leases.py).
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claim_token', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('claim_token')
