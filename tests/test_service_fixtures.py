"""Stacks sharing the machine's Redis never share a database (their queues stay theirs)."""

import os

import pytest

from tests.service_fixtures import claimed_redis_url


@pytest.mark.skipif(not os.environ.get("XMLX_TEST_REDIS_URL"), reason="no shared test Redis")
def test_claims_are_exclusive_and_released() -> None:
    with claimed_redis_url() as first, claimed_redis_url() as second:
        assert first is not None and second is not None
        assert first != second
    with claimed_redis_url() as again:
        assert again is not None
