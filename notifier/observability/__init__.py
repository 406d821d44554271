"""What the processes tell operators: JSON logs with personal data masked (N7) and Prometheus metrics.

Both are switched on by the process's entry point (`notifier.cli`), never at import time.
"""
