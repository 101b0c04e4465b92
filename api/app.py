"""The FastAPI application: `create_app(settings)`, and `app` for `uvicorn api.app:app`.

Importing this module builds nothing and never imports TensorFlow (tests check it):
the database engine, the object store and the Redis clients are built when the app
starts (its lifespan). Start-up refuses to serve -- it raises, and uvicorn exits with
the message -- when the database is not migrated to this code's revision
(`db.not_migrated`: run `xmlx db upgrade`) or the storage bucket cannot be created.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import web
from api.broker import Broker, make_redis
from api.deps import ApiState
from api.idempotency import ReplayStore
from api.metrics import Metrics, RequestTimer
from api.outages import install_outage_handlers
from api.problems import install_handlers
from api.ratelimit import RateLimiter
from api.requestid import RequestIdMiddleware
from api.routes import (
    admin,
    capabilities,
    datasets,
    deletions,
    explanations,
    files,
    health,
    jobs,
    models,
    uploads,
    webhooks,
)
from xmlx import logs, tracing
from xmlx.db import engine_from_settings, make_session_factory
from xmlx.migrate import ensure_migrated
from xmlx.settings import Settings, get_settings
from xmlx.storage import make_object_store

log = logging.getLogger("xmlx.api")

API_VERSION = "1.0.0"
DESCRIPTION = """Interpretable extreme multi-label learning on images, as batch jobs.

Upload images and a label manifest (`/v1/uploads`), register a dataset, train a model,
then submit explanation or prediction batches and read their results. Every request
needs `Authorization: Bearer <api key>`; every error is `application/problem+json`
with a stable `code`. POSTs accept an `Idempotency-Key` header.
"""


def build_state(settings: Settings) -> ApiState:
    """Every resource the routes use; raises if the service cannot work."""
    engine = engine_from_settings(settings)
    try:
        ensure_migrated(engine)
        store = make_object_store(settings)
        store.ensure_bucket()
    except Exception:
        engine.dispose()
        raise
    sessions = make_session_factory(engine)
    client = make_redis(settings.redis_url)
    broker = Broker(settings, client)
    return ApiState(
        settings=settings,
        engine=engine,
        sessions=sessions,
        store=store,
        redis=client,
        broker=broker,
        limiter=RateLimiter(client, settings.rate_limit_per_minute),
        replays=ReplayStore(client, "datasets"),
        metrics=Metrics(sessions, broker.queue_depths),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API; `settings` default to the process settings (`XMLX_*` variables)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(settings or get_settings())
        if not logging.getLogger().handlers:  # a server process, not a test's app
            logs.configure_root(state.settings.log_format)
        app.state.xmlx = state
        log.info("xmlx API ready (storage: %s)", state.settings.storage_backend)
        try:
            yield
        finally:
            app.state.xmlx = None
            state.close()

    app = FastAPI(
        title="xmlx",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_handlers(app)
    install_outage_handlers(app)
    app.add_middleware(RequestTimer, metrics=lambda: _metrics_of(app))
    app.add_middleware(RequestIdMiddleware)  # outermost: every answer has its id
    for module in (
        health,
        capabilities,
        uploads,
        files,
        datasets,
        models,
        explanations,
        jobs,
        webhooks,
        deletions,
        admin,
    ):
        app.include_router(module.router)
    app.include_router(web.router)
    tracing.instrument_fastapi(app)
    return app


def _metrics_of(app: FastAPI) -> Metrics | None:
    state: ApiState | None = getattr(app.state, "xmlx", None)
    return state.metrics if state is not None else None


app = create_app()
