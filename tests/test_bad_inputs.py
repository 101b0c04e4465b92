"""Scenario 6 (RELIABILITY.md): the bad-input corpus through a real worker.

One explanation batch mixes every image kind of `tests/bad_inputs.py` with good dish
images. Each bad item fails alone with its stable code, the valid-but-unusual images
succeed, the job ends `partially_succeeded`, the worker process is the same one at the
end (nothing crashed it) and its memory stays bounded. Invalid keys are refused at
submission (422 `key.invalid`) and change nothing; bad manifests are refused by
POST /v1/datasets with their code and line.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.bad_inputs import (
    Case,
    TrainedStack,
    image_cases,
    key_cases,
    manifest_cases,
    shared_trained_stack,
)
from xmlx.client import Client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BAD_FOLDER = "bad"
RSS_GROWTH_BOUND_MIB = 200  # the batch may warm caches; a leak per item would be far more
EXPLAIN_PARAMS = {"num_samples": 16, "n_segments": 8}


@pytest.fixture(scope="session")
def trained_stack(request: pytest.FixtureRequest) -> TrainedStack:
    return shared_trained_stack(request)


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _explain(client: Client, ts: TrainedStack, keys: list[str], **extra: Any) -> httpx.Response:
    body = {"model_id": ts.model_id, "dataset_id": ts.dataset_id, "images": keys,
            "params": EXPLAIN_PARAMS, "target": {"kind": "top_k", "k": 1}, **extra}  # fmt: skip
    return client.http.post("/v1/explanations", json=body)


def _job_ids(client: Client) -> set[str]:
    return {job["id"] for job in client.request("GET", "/v1/jobs", params={"limit": 1000})["items"]}


def test_bad_images_fail_alone_and_the_worker_survives(
    trained_stack: TrainedStack, record_property: Any
) -> None:
    ts = trained_stack
    cases = image_cases()
    worker = ts.stack.processes["worker1"]
    good = ts.image_keys[:6]
    with ts.client() as client:
        # Warm-up: the worker loads the model and the explainer once, so the memory
        # sampled around the corpus batch is what the bad items cost, not first use.
        warm = _explain(client, ts, good[:2])
        assert warm.status_code == 202, warm.text
        assert client.wait(warm.json()["id"], timeout=180, poll=0.5).state == "succeeded"
        (child,) = _children(worker.pid)
        rss_before = _status_kib(child, "VmRSS")

        client.upload({f"dishes/images/{BAD_FOLDER}/{c.key}": c.data
                       for c in cases if c.data is not None})  # fmt: skip
        keys = [f"{BAD_FOLDER}/{c.key}" for c in cases] + good
        random.Random(0).shuffle(keys)  # bad and good items share chunks and batches
        answer = _explain(client, ts, keys)
        assert answer.status_code == 202, answer.text
        final = client.wait(answer.json()["id"], timeout=300, poll=0.5)
        results = {item.key: item for item in client.iter_results(final.id)}

    outcome = {c.name: results[f"{BAD_FOLDER}/{c.key}"] for c in cases}
    mismatches = {
        c.name: (outcome[c.name].state, outcome[c.name].error_code)
        for c in cases
        if (outcome[c.name].state, outcome[c.name].error_code)
        != (c.expected_state, c.expected_code)
    }
    assert not mismatches, mismatches
    expected_failed = [c for c in cases if c.expected_state == "failed"]
    for case in expected_failed:
        message = outcome[case.name].error_message
        assert message and len(message) < 2000, (case.name, message)
    assert all(outcome[c.name].result for c in cases if c.expected_state == "succeeded")
    assert all(results[key].state == "succeeded" for key in good)

    assert final.state == "partially_succeeded", final.raw
    assert (final.total, final.failed) == (len(keys), len(expected_failed))
    assert final.done + final.failed == final.total
    assert final.raw["errors_by_code"] == dict(Counter(c.expected_code for c in expected_failed))

    assert worker.poll() is None and _children(worker.pid) == [child], "a worker process died"
    rss_after, peak = _status_kib(child, "VmRSS"), _status_kib(child, "VmHWM")
    growth_mib = (rss_after - rss_before) / 1024
    for name, value in (("rss_before_mib", rss_before / 1024), ("rss_after_mib", rss_after / 1024),
                        ("rss_peak_mib", peak / 1024), ("items", len(keys)),
                        ("kinds", len(cases)), ("failed", final.failed)):  # fmt: skip
        record_property(name, round(value, 1))
    print(f"worker rss before {rss_before / 1024:.0f} MiB, after {rss_after / 1024:.0f} MiB, "
          f"peak {peak / 1024:.0f} MiB; {len(cases)} kinds, {len(keys)} items")  # fmt: skip
    assert growth_mib < RSS_GROWTH_BOUND_MIB, f"worker RSS grew by {growth_mib:.0f} MiB"


def _refused(answer: httpx.Response, code: str) -> dict[str, Any]:
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = answer.json()
    assert body["code"] == code, body
    return body


@pytest.mark.parametrize("case", key_cases(), ids=lambda c: c.name)
def test_an_invalid_key_refuses_the_whole_batch(trained_stack: TrainedStack, case: Case) -> None:
    ts = trained_stack
    keys = [*ts.image_keys[:3], case.key, ts.image_keys[3]]
    with ts.client() as client:
        before = _job_ids(client)
        body = _refused(_explain(client, ts, keys), "key.invalid")
        assert [e["index"] for e in body["errors"]] == [3]
        assert _job_ids(client) == before  # nothing was created


def test_all_invalid_keys_are_reported_at_once_then_a_valid_batch_proceeds(
    trained_stack: TrainedStack,
) -> None:
    ts = trained_stack
    bad = key_cases()
    with ts.client() as client:
        before = _job_ids(client)
        body = _refused(_explain(client, ts, [c.key for c in bad]), "key.invalid")
        assert [e["index"] for e in body["errors"]] == list(range(len(bad)))
        assert _job_ids(client) == before
        # The same request with well-formed keys of objects that are not there is
        # accepted; its items then fail one by one on the worker.
        missing = [f"never-uploaded/{c.name}.png" for c in bad]
        answer = _explain(client, ts, missing)
        assert answer.status_code == 202, answer.text
        final = client.wait(answer.json()["id"], timeout=180, poll=0.5)
    assert final.state == "failed" and final.failed == len(missing), final.raw
    assert final.raw["errors_by_code"] == {"image.missing": len(missing)}


def test_bad_manifests_are_refused_with_code_and_line(trained_stack: TrainedStack) -> None:
    ts = trained_stack
    cases = manifest_cases(ts.image_keys)
    with ts.client() as client:
        client.upload({c.key: c.data for c in cases if c.data is not None}, "text/csv")
        before = client.request("GET", "/v1/datasets", params={"limit": 1000})["items"]
        for case in cases:
            body = {"name": case.name, "images_prefix": "dishes/images/", "manifest_key": case.key}
            problem = _refused(client.http.post("/v1/datasets", json=body), str(case.expected_code))
            assert problem["detail"], case.name
            if case.line is not None:
                assert problem["errors"][0]["line"] == case.line, (case.name, problem)
        after = client.request("GET", "/v1/datasets", params={"limit": 1000})["items"]
    assert after == before


def test_the_corpus_has_at_least_30_kinds() -> None:
    kinds = image_cases() + key_cases() + manifest_cases(["a.png", "b.png"])
    assert len({c.name for c in kinds}) == len(kinds) >= 30
    assert {c.expected_state for c in kinds} == {"succeeded", "failed", "refused"}
