"""The API's side of Redis: send wake-up messages, read queue depths, answer pings.

Messages are sent by task name through a Celery app built from the API's own settings
(`xmlx.messaging`, the kernel), so the API never imports worker code or TensorFlow.
The database is the truth: when sending fails (broker down), the job rows are already
committed and the reconciler sends their chunks later, so a request that
created a job still succeeds; the failure is logged and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis
from celery import Celery

from xmlx.messaging import QUEUES, producer_app, send_preparation, send_purge, send_wakeups
from xmlx.settings import Settings

log = logging.getLogger("xmlx.api")

REDIS_TIMEOUT_SECONDS = 0.5
# One quick retry, then give up and leave the chunks to the reconciler.
_PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2}


def make_redis(url: str) -> redis.Redis:
    """A client that gives up fast: callers fail open rather than hang a request."""
    return redis.Redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        health_check_interval=30,
    )


class Broker:
    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.redis = client
        self.celery: Celery = producer_app(settings)
        # A task-sent event costs one more Redis round trip per chunk (313 for 10,000
        # items); the queue length and the job rows already say what was sent.
        self.celery.conf.task_send_sent_event = False
        self.celery.conf.broker_transport_options = {
            **(self.celery.conf.broker_transport_options or {}),
            "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
            "socket_timeout": REDIS_TIMEOUT_SECONDS,
        }

    def send_chunks(self, chunks: Sequence[tuple[str, str]]) -> bool:
        """One wake-up per `(chunk_id, kind)`; False when the broker failed.

        Call only after the rows are committed (a fast worker must find them).
        """
        try:
            send_wakeups(self.celery, chunks, retry_policy=_PUBLISH_RETRY)
        except Exception:
            log.exception("could not enqueue %d chunks; the reconciler will", len(chunks))
            return False
        return True

    def send_preparation(self, job_id: str) -> bool:
        """The `prepare_batch` message of a preparing job; False when the broker failed
        (the reconciler sends it once the job has been idle for its grace)."""
        try:
            send_preparation(self.celery, job_id, retry_policy=_PUBLISH_RETRY)
        except Exception:
            log.exception("could not enqueue the preparation of %s; the reconciler will", job_id)
            return False
        return True

    def send_purge(self, purge_id: str) -> bool:
        """The message of a purge just recorded; False when the broker failed (the
        purge sweep sends it once the purge has been idle for its grace)."""
        try:
            send_purge(self.celery, purge_id, retry_policy=_PUBLISH_RETRY)
        except Exception:
            log.exception("could not enqueue purge %s; the purge sweep will", purge_id)
            return False
        return True

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting per queue (Celery's Redis transport keeps a list per queue)."""
        pipe = self.redis.pipeline(transaction=False)
        for queue in QUEUES:
            pipe.llen(queue)
        return {queue: int(n) for queue, n in zip(QUEUES, pipe.execute(), strict=True)}

    def ping(self) -> None:
        self.redis.ping()

    def close(self) -> None:
        self.redis.close()
        self.celery.close()
