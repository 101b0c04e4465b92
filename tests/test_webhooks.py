"""Webhooks in the kernel: the outbox row written with the final state, claims and
leases, signed delivery to a loopback receiver, retries, give-up, and the URL rules.
A database of its own: the deliverer looks at every tenant's rows."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.kernel_fixtures import fresh_database
from tests.webhook_receiver import running_receiver
from xmlx import jobs, migrate, webhooks
from xmlx import repository as repo
from xmlx.db import SessionFactory, create_engine, make_session_factory, session_scope, utcnow
from xmlx.jobs.common import settle_job
from xmlx.models import WebhookDelivery
from xmlx.repository import webhooks as webhook_repo
from xmlx.settings import Settings, get_settings
from xmlx.webhooks import delivery
from xmlx.webhooks.urls import WebhookUrlError, check_callback_url

LOOPBACK = frozenset({"127.0.0.1"})


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fresh_database(tmp_path_factory.mktemp("webhooks")) as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture(scope="module")
def sessions(database: str) -> Iterator[SessionFactory]:
    engine = create_engine(database)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path, webhook_allowed_hosts="127.0.0.1", webhook_retry_base_seconds=10,
        webhook_retry_max_seconds=40, webhook_give_up_seconds=3600,
        webhook_connect_timeout_seconds=1, webhook_read_timeout_seconds=1,
    )  # fmt: skip


def _tenant(sessions: SessionFactory) -> str:
    with session_scope(sessions) as session:
        return repo.create_tenant(session, f"t-{uuid.uuid4().hex}").id


def _job(sessions: SessionFactory, tenant: str, url: str | None, n: int = 2) -> str:
    keys = [f"img/{i}.png" for i in range(n)]
    created = jobs.create_job(
        sessions, tenant_id=tenant, kind="predict", item_keys=keys, callback_url=url
    )
    return created.job.id


def _finish(sessions: SessionFactory, job_id: str, n: int = 2) -> None:
    for i in range(n):
        jobs.record_item_success(sessions, job_id, f"img/{i}.png", result={})


def _deliveries(sessions: SessionFactory, job_id: str) -> list[WebhookDelivery]:
    with session_scope(sessions) as session:
        return list(webhook_repo.list_deliveries(session, job_id))


def _deliver(sessions: SessionFactory, settings: Settings, owner: str = "w1") -> dict[str, int]:
    return webhooks.deliver_due(sessions, settings, owner, budget_seconds=10)


def test_the_final_state_writes_one_row_in_its_transaction(sessions: SessionFactory) -> None:
    tenant = _tenant(sessions)
    job_id = _job(sessions, tenant, "http://127.0.0.1:9/hook")
    assert _deliveries(sessions, job_id) == []  # queued: nothing yet
    _finish(sessions, job_id)
    rows = _deliveries(sessions, job_id)
    assert [(r.event, r.state, r.attempts) for r in rows] == [("job.succeeded", "pending", 0)]
    assert rows[0].payload["job"]["state"] == "succeeded"
    assert rows[0].payload["job"]["progress"] == {"total": 2, "done": 2, "failed": 0}
    with session_scope(sessions) as session:  # a second settle of the final job: no copy
        settle_job(session, job_id)
    assert len(_deliveries(sessions, job_id)) == 1
    # No URL on the job and no tenant default: no row.
    quiet = _job(sessions, tenant, None)
    _finish(sessions, quiet)
    assert _deliveries(sessions, quiet) == []


def test_cancel_failure_and_tenant_default(sessions: SessionFactory) -> None:
    tenant = _tenant(sessions)
    with session_scope(sessions) as session:
        webhook_repo.put_settings(
            session, tenant, url="http://127.0.0.1:9/default", secret=webhooks.new_secret()
        )
    cancelled = _job(sessions, tenant, None)
    jobs.request_cancel(sessions, tenant, cancelled)
    failed = _job(sessions, tenant, "http://127.0.0.1:9/own")
    jobs.fail_job(sessions, failed, "model.load_failed", "no model")
    (row,) = _deliveries(sessions, cancelled)
    assert (row.event, row.url) == ("job.cancelled", "http://127.0.0.1:9/default")
    (row,) = _deliveries(sessions, failed)
    assert (row.event, row.url) == ("job.failed", "http://127.0.0.1:9/own")
    assert row.payload["job"]["error"]["code"] == "model.load_failed"


def test_a_claim_is_a_lease_only_its_holder_writes(sessions: SessionFactory) -> None:
    tenant = _tenant(sessions)
    job_id = _job(sessions, tenant, "http://127.0.0.1:9/hook")
    _finish(sessions, job_id)
    (row,) = _deliveries(sessions, job_id)
    now, lease = utcnow(), timedelta(seconds=60)
    with session_scope(sessions) as session:
        assert webhook_repo.claim(session, row.id, "w1", now, lease)
        assert not webhook_repo.claim(session, row.id, "w2", now, lease)
        assert row.id not in webhook_repo.due_delivery_ids(session, now, 1000)
    later = now + timedelta(seconds=61)  # w1 died: its claim expired
    with session_scope(sessions) as session:
        assert row.id in webhook_repo.due_delivery_ids(session, later, 1000)
        assert webhook_repo.claim(session, row.id, "w2", later, lease)
        assert not webhook_repo.record_attempt(session, row.id, "w1", last_status=200)
        assert webhook_repo.record_attempt(session, row.id, "w2", last_status=200)
    assert _deliveries(sessions, job_id)[0].attempts == 1


def test_delivery_is_signed_and_recorded(sessions: SessionFactory, settings: Settings) -> None:
    tenant = _tenant(sessions)
    with running_receiver() as receiver:
        job_id = _job(sessions, tenant, receiver.url)
        _finish(sessions, job_id)
        assert _deliver(sessions, settings)["delivered"] >= 1
        assert _deliver(sessions, settings)["delivered"] == 0  # nothing due any more
        calls = [c for c in receiver.calls if json.loads(c.body)["job"]["id"] == job_id]
    with session_scope(sessions) as session:
        secret = webhook_repo.get_settings(session, tenant).secret  # type: ignore[union-attr]
    (call,) = calls
    (row,) = _deliveries(sessions, job_id)
    assert call.signed_by(secret) and not call.signed_by(secret + "x")
    assert call.delivery_id == row.id and call.headers["Xmlx-Event"] == "job.succeeded"
    assert json.loads(call.body) == row.payload
    assert (row.state, row.attempts, row.last_status, row.last_error) == (
        "delivered", 1, 200, None
    )  # fmt: skip
    assert row.delivered_at is not None


def test_a_failing_receiver_is_retried_then_given_up(
    sessions: SessionFactory, settings: Settings
) -> None:
    tenant = _tenant(sessions)
    with running_receiver() as receiver:
        receiver.status = 503
        job_id = _job(sessions, tenant, receiver.url)
        _finish(sessions, job_id)
        before = utcnow()
        _deliver(sessions, settings)
        (row,) = _deliveries(sessions, job_id)
        assert (row.state, row.attempts, row.last_status) == ("pending", 1, 503)
        assert row.last_error == "webhook.http_status"
        wait = (row.next_attempt_at - before).total_seconds()
        assert 8 <= wait <= 12.5  # base 10 s, +-20 % jitter
        _deliver(sessions, settings)
        assert _deliveries(sessions, job_id)[0].attempts == 1  # not due yet
        with session_scope(sessions) as session:  # the give-up horizon has passed
            stored = session.get(WebhookDelivery, row.id)
            assert stored is not None
            stored.next_attempt_at = utcnow()
            stored.created_at = utcnow() - timedelta(hours=2)
        _deliver(sessions, settings)
    (row,) = _deliveries(sessions, job_id)
    assert (row.state, row.attempts, row.last_status) == ("failed", 2, 503)


def test_redirects_are_not_followed(sessions: SessionFactory, settings: Settings) -> None:
    tenant = _tenant(sessions)
    with running_receiver() as receiver, running_receiver() as elsewhere:
        receiver.status, receiver.headers = 307, {"Location": elsewhere.url}
        job_id = _job(sessions, tenant, receiver.url)
        _finish(sessions, job_id)
        _deliver(sessions, settings)
        assert elsewhere.calls == []
    (row,) = _deliveries(sessions, job_id)
    assert (row.last_status, row.last_error) == (307, "webhook.redirect_not_followed")


def test_a_receiver_that_is_down_gets_the_call_when_back(
    sessions: SessionFactory, settings: Settings
) -> None:
    tenant = _tenant(sessions)
    with running_receiver() as probe:
        port = probe.port  # a port nobody listens on once the probe stops
    job_id = _job(sessions, tenant, f"http://127.0.0.1:{port}/hook")
    _finish(sessions, job_id)
    _deliver(sessions, settings)
    (row,) = _deliveries(sessions, job_id)
    assert (row.state, row.last_error) == ("pending", "webhook.connect_failed")
    with running_receiver() as receiver:  # back, on a new port: the row points at it
        with session_scope(sessions) as session:
            stored = session.get(WebhookDelivery, row.id)
            assert stored is not None
            stored.url, stored.next_attempt_at = receiver.url, utcnow()
        _deliver(sessions, settings)
        assert receiver.delivered_ids() == {row.id}
    assert _deliveries(sessions, job_id)[0].attempts == 2


def test_the_address_is_checked_again_at_delivery(
    sessions: SessionFactory, settings: Settings
) -> None:
    """Allowed at submit, not at delivery (an allow-list shrunk, or a name rebound to an
    internal address): refused without a connection."""
    tenant = _tenant(sessions)
    with running_receiver() as receiver:
        job_id = _job(sessions, tenant, receiver.url)
        _finish(sessions, job_id)
        strict = settings.model_copy(update={"webhook_allowed_hosts": ""})
        _deliver(sessions, strict)
        assert receiver.calls == []
    (row,) = _deliveries(sessions, job_id)
    assert (row.state, row.last_error) == ("pending", "webhook.url_not_allowed")


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/hook", "http://192.168.0.1/hook", "http://169.254.169.254/latest",
        "http://[::1]/hook", "http://localhost:8000/hook", "http://0.0.0.0/hook",
        "http://224.0.0.1/hook", "http://[::ffff:127.0.0.1]/hook", "ftp://example.com/x",
        "http://user:pw@127.0.0.1/hook", "https:///nohost", "file:///etc/passwd",
        "http://no-such-host.invalid/hook", "http://127.0.0.1:9/a\x00b", "http://127.0.0.1/a b",
    ],
)  # fmt: skip
def test_internal_and_odd_urls_are_refused(url: str) -> None:
    with pytest.raises(WebhookUrlError) as raised:
        check_callback_url(url, LOOPBACK)
    assert raised.value.code == "webhook.url_not_allowed"


def test_the_allow_list_admits_loopback() -> None:
    assert check_callback_url("http://127.0.0.1:8080/hook", LOOPBACK)
    with pytest.raises(WebhookUrlError):
        check_callback_url("http://127.0.0.1:8080/hook", frozenset())


def test_signature_scheme() -> None:
    body, secret = b'{"a":1}', "whsec_test"
    header = webhooks.signature(secret, body, 1_700_000_000)
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    assert webhooks.verify(secret, body, header, now=1_700_000_100)
    assert not webhooks.verify(secret, body + b" ", header, now=1_700_000_100)
    assert not webhooks.verify(secret, body, header, now=1_700_000_000 + 301)  # too old
    assert not webhooks.verify(secret, body, "v1=00", now=1_700_000_000)


def test_retry_schedule_grows_and_is_capped(settings: Settings) -> None:
    rng = random.Random(0)
    delays = [delivery.retry_delay(settings, n, rng) for n in range(1, 7)]
    assert 8 <= delays[0] <= 12 and 16 <= delays[1] <= 24
    assert all(32 <= d <= 48 for d in delays[2:])  # capped at 40 s +-20 %


def test_cli_sets_a_tenant_default(
    database: str, sessions: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xmlx.cli import app

    with session_scope(sessions) as session:
        name = repo.create_tenant(session, f"cli-{uuid.uuid4().hex}").name
    monkeypatch.setenv("XMLX_DATABASE_URL", database)
    monkeypatch.setenv("XMLX_WEBHOOK_ALLOWED_HOSTS", "127.0.0.1")
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        args = ["webhooks", "set", "--tenant", name, "--url", "http://127.0.0.1:9/h"]
        first = runner.invoke(app, args)
        assert first.exit_code == 0, first.output
        assert "http://127.0.0.1:9/h" in first.output and "whsec_" in first.output
        refused = runner.invoke(app, [*args[:4], "--url", "http://10.0.0.1/h"])
        assert refused.exit_code == 2 and "private" in refused.output
        unknown = runner.invoke(app, ["webhooks", "set", "--tenant", "nobody-" + name])
        assert unknown.exit_code == 2
    finally:
        get_settings.cache_clear()


def test_beat_sends_the_delivery_task_to_the_default_queue(settings: Settings) -> None:
    from xmlx.messaging import DEFAULT_QUEUE, TASK_DELIVER_WEBHOOKS, producer_app

    app = producer_app(settings.model_copy(update={"webhook_interval_seconds": 2.5}))
    entry = app.conf.beat_schedule["deliver-webhooks"]
    assert (entry["task"], entry["schedule"]) == (TASK_DELIVER_WEBHOOKS, 2.5)
    assert entry["options"]["queue"] == DEFAULT_QUEUE
    assert app.conf.task_routes[TASK_DELIVER_WEBHOOKS] == {"queue": DEFAULT_QUEUE}


def test_a_slow_receiver_does_not_hold_the_others(
    sessions: SessionFactory, settings: Settings
) -> None:
    tenant = _tenant(sessions)
    with running_receiver() as slow, running_receiver() as fast:
        hold = slow.hang = threading.Event()
        stuck, quick = _job(sessions, tenant, slow.url), _job(sessions, tenant, fast.url)
        _finish(sessions, stuck)
        _finish(sessions, quick)
        patient = settings.model_copy(update={"webhook_read_timeout_seconds": 8})
        worker = threading.Thread(target=_deliver, args=(sessions, patient))
        worker.start()
        deadline = time.monotonic() + 4  # one sender at a time would wait out the 8 s
        while not (slow.calls and fast.calls) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slow.calls and fast.calls  # the fast one got its POST while the slow one hangs
        slow.hang = None
        hold.set()
        worker.join(timeout=10)
    assert [r.state for r in _deliveries(sessions, quick)] == ["delivered"]
