"""The pure core: events, metric state, event-time windows, the label join and the decision policy.

Nothing here does I/O or imports faust, asyncio, kubernetes, mlflow or a Kafka client; an
import-linter contract in pyproject.toml (checked by tests/test_architecture.py) keeps it so.
"""
