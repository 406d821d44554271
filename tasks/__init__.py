"""Celery app and thin task wrappers; all work happens in `notifier.services`."""
