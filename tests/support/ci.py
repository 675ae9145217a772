"""Whether the suite runs under CI (``CI=true``): there a missing database
server or RabbitMQ broker fails the tests that need it instead of skipping
them."""

from __future__ import annotations

import os


def in_ci() -> bool:
    return os.environ.get("CI") == "true"
