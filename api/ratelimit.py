"""Per-tenant rate limit: a fixed one-minute window counted in Redis.

Each request of a tenant increments `xmlx:ratelimit:{tenant}:{window}`; past
`Settings.rate_limit_per_minute` the request is refused with 429 `rate.limited` and a
`Retry-After` until the window ends. Counting in Redis makes the limit hold across API
replicas; the key expires on its own, so nothing needs cleaning.

Fail open: when Redis cannot be reached the request is allowed and a warning is
logged (at most once per back-off period, during which Redis is not asked again, so
an outage costs one timeout, not one per request). A broken limiter must not take the
whole API down; the queue and the database still protect themselves.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

log = logging.getLogger("xmlx.api")

WINDOW_SECONDS = 60
BACKOFF_SECONDS = 5.0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: int  # seconds until the window resets (0 when allowed)


class RateLimiter:
    def __init__(
        self,
        client: redis.Redis,
        limit_per_minute: int,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.limit = limit_per_minute
        self.clock = clock
        self._skip_until = 0.0

    def hit(self, tenant_id: str) -> Decision:
        """Count one request of `tenant_id` and say whether it may go ahead."""
        now = self.clock()
        if now < self._skip_until:
            return Decision(True, self.limit, self.limit, 0)
        window = int(now // WINDOW_SECONDS)
        key = f"xmlx:ratelimit:{tenant_id}:{window}"
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, WINDOW_SECONDS * 2)
            count = int(pipe.execute()[0])
        except redis.RedisError as exc:
            self._skip_until = now + BACKOFF_SECONDS
            log.warning("rate limiter: Redis unreachable, allowing requests (%s)", exc)
            return Decision(True, self.limit, self.limit, 0)
        remaining = max(self.limit - count, 0)
        if count <= self.limit:
            return Decision(True, self.limit, remaining, 0)
        retry_after = max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))
        return Decision(False, self.limit, 0, retry_after)
