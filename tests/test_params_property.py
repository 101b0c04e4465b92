"""Issue 11, item 1: every parameter value is checked at submit, and anything the API
accepts runs to a final state in a real worker.

Property (a): any explanation body the API accepts (202), a worker -- the real
`workers.runner.run_chunk`, in process, on the test database and store, with a tiny
trained model -- runs to a final job state without raising (a raise is a redelivery:
the old code looped until `chunk.max_attempts`), and no item fails with
`chunk.max_attempts`. Values are drawn over each method's whole schema; the tenant's
cost limit (`tenants.max_job_forward_passes` = 1,100) keeps each example well under a
second, and bodies over it are refused with `quota.job_cost` (the mechanism that bounds
a worker's load).

Property (b): every out-of-bound or mistyped value is a 422 `config.bad_parameter`
whose detail names the parameter. The five bodies that jammed the GPU queue in the
issue are explicit examples.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tests.api_fixtures import API_TEST_PEPPER, ApiUser, create_dataset, upload_files
from workers.context import WorkerContext
from workers.runner import run_chunk
from xmlcore.params import PARAMS_MODELS
from xmlx import repository as repo
from xmlx.db import SessionFactory, session_scope
from xmlx.settings import Settings
from xmlx.storage import make_object_store

COST_LIMIT = 1100  # LIME's default 1,000 samples on one image fit
ISSUE_BODIES = (
    {"fill": [1, 2]},
    {"fill": {"a": 1}},
    {"num_samples": "abc"},
    {"num_samples": 1000000000},
    {"batch_size": 100000000},
)
FINAL = {"succeeded", "partially_succeeded", "failed"}
HIERARCHY = {"layers": [{"layer": 1, "units": [{"index": 0, "members": [["salt", 1.0]]}]}]}


@dataclass(frozen=True)
class Setup:
    client: TestClient
    user: ApiUser
    settings: Settings
    sessions: SessionFactory
    model_id: str
    image_keys: list[str]


@pytest.fixture(scope="module")
def setup(
    session_client: TestClient,
    api_settings: Settings,
    session_factory: SessionFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Setup:
    """A tenant with a low cost limit, a dataset, a real tiny 32 px model stored where
    a worker loads it from, and one uploaded image."""
    from xmlcore.datasets import generate_dishes
    from xmlcore.images import encode_png
    from xmlcore.model import train_two_step

    with session_scope(session_factory) as session:
        tenant = repo.create_tenant(session, f"params-{uuid.uuid4().hex}")
        tenant.max_job_forward_passes = COST_LIMIT
        _row, key = repo.create_api_key(session, tenant.id, API_TEST_PEPPER, "t")
        user = ApiUser(tenant.id, key)
    client = session_client
    dataset = create_dataset(client, user, tmp_path_factory.mktemp("dishes"))
    data = generate_dishes("tiny", seed=0, n_images=24, image_size=32)
    model = train_two_step(
        data.images, data.label_space, layer_sizes=(8, 4), epochs=1, batch_size=8,
        ae_params={"epochs": 5},
    )  # fmt: skip
    body = {
        "dataset_id": dataset["id"],
        "training": {"layer_sizes": [8, 4], "image_size": [32, 32]},
    }
    answer = client.post("/v1/models", json=body, headers=user.headers)
    assert answer.status_code == 202, answer.text
    model_id = str(answer.json()["model"]["id"])
    artifact = f"tenants/{user.tenant_id}/models/{model_id}/model.zip"
    make_object_store(api_settings).put_bytes(artifact, model.to_bytes(), "application/zip")
    with session_scope(session_factory) as session:
        assert repo.transition_model(
            session, model_id, ["pending", "training"], "ready", artifact_key=artifact,
            hierarchy=HIERARCHY, metrics={},
        )  # fmt: skip
    upload_files(client, user, {"p/one.png": encode_png(data.images[0])}, "image/png")
    return Setup(client, user, api_settings, session_factory, model_id, ["p/one.png"])


@pytest.fixture(scope="module")
def worker(setup: Setup) -> WorkerContext:
    """A worker's context on the API's database and store (the model cache persists)."""
    store = make_object_store(setup.settings)
    return WorkerContext(setup.settings, setup.sessions, store, owner="property-worker")


# ------------------------------------------------------------------ strategies


def _schema(method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    schema = PARAMS_MODELS[method].model_json_schema()
    return schema["properties"], schema.get("$defs", {})


def valid_values(prop: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Every value the JSON schema of one parameter allows (bounds included)."""
    if "$ref" in prop:
        inner = defs[prop["$ref"].rsplit("/", 1)[-1]]["properties"]
        return st.fixed_dictionaries(
            {}, optional={k: valid_values(v, defs) for k, v in inner.items()}
        )
    if "anyOf" in prop:
        return st.one_of([valid_values(branch, defs) for branch in prop["anyOf"]])
    if "const" in prop or "enum" in prop:
        return st.sampled_from(prop.get("enum", [prop.get("const")]))
    kind = prop.get("type")
    if kind == "integer":  # the whole range, and often its cheap low end
        low, high = prop.get("minimum", 0), prop.get("maximum", 2**31)
        return st.one_of(st.integers(low, min(high, low + 64)), st.integers(low, high))
    if kind == "number":
        low = prop.get("minimum", prop.get("exclusiveMinimum"))
        return st.floats(
            low, prop.get("maximum"), exclude_min="exclusiveMinimum" in prop, allow_nan=False
        )
    if kind == "array":
        return st.tuples(*[valid_values(p, defs) for p in prop["prefixItems"]]).map(list)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "string":
        return st.from_regex(prop["pattern"], fullmatch=True).filter(lambda t: len(t) <= 200)
    raise AssertionError(f"no strategy for {prop}")


def valid_params(method: str) -> st.SearchStrategy[dict[str, Any]]:
    props, defs = _schema(method)
    return st.fixed_dictionaries({}, optional={k: valid_values(v, defs) for k, v in props.items()})


def _branches(prop: dict[str, Any]) -> list[dict[str, Any]]:
    return list(prop.get("anyOf", [prop]))


def bad_values(prop: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values no branch of the parameter's schema allows: out of every numeric range,
    of a JSON type it does not take, or a string outside its enum or pattern."""
    branches = _branches(prop)
    kinds = {b.get("type", "object" if "$ref" in b else None) for b in branches}
    numeric = [b for b in branches if b.get("type") in ("integer", "number")]
    lows = [b.get("minimum", b.get("exclusiveMinimum", 0)) for b in numeric]
    highs = [b.get("maximum", 10**6) for b in numeric]
    options: list[st.SearchStrategy[Any]] = [st.just([1, 2]), st.just({"a": 1})]
    if numeric:
        options.append(st.integers(max_value=int(min(lows)) - 1))
        options.append(st.integers(min_value=int(max(highs)) + 1))
    else:
        options.append(st.integers())
    if "number" not in kinds:
        options.append(st.just(1.5))
    if "boolean" not in kinds:
        options.append(st.booleans())
    if "null" not in kinds:
        options.append(st.none())
    if "string" not in kinds or all(
        "pattern" not in b for b in branches if b.get("type") == "string"
    ):
        options.append(st.sampled_from(["abc", "", "500"]))
    else:
        options.append(st.just("a layer with spaces"))
    return st.one_of(options)


@st.composite
def bad_bodies(draw: st.DrawFn) -> tuple[str, dict[str, Any], str]:
    """A method, valid params with one bad value (or an unknown name), and the name."""
    method = draw(st.sampled_from(sorted(PARAMS_MODELS)))
    props, _defs = _schema(method)
    name = draw(st.sampled_from([*sorted(props), "no_such_parameter"]))
    value = 1 if name not in props else draw(bad_values(props[name]))
    return method, {name: value}, name


TARGETS = st.one_of(
    st.builds(lambda k: {"kind": "top_k", "k": k}, st.integers(1, 3)),
    st.builds(lambda i: {"kind": "latent", "index": i}, st.integers(0, 3)),
)


# ------------------------------------------------------------------------ tests


def _submit(setup: Setup, method: str, params: Any, target: Any = None) -> Any:
    body: dict[str, Any] = {"model_id": setup.model_id, "images": setup.image_keys}
    body.update({"method": method, "params": params})
    if target is not None:
        body["target"] = target
    return setup.client.post("/v1/explanations", json=body, headers=setup.user.headers)


def _deliver_until_final(worker: WorkerContext, job_id: str) -> list[BaseException]:
    """Run every chunk as Celery would: a raise is a redelivery, up to the attempts."""
    raised: list[BaseException] = []
    with session_scope(worker.sessions) as session:
        chunk_ids = [chunk.id for chunk in repo.list_chunks(session, job_id)]
    for chunk_id in chunk_ids:
        for _ in range(worker.settings.max_attempts_per_chunk + 1):
            try:
                run_chunk(worker, chunk_id)
                break
            except Exception as exc:  # a redelivery, which the property forbids
                raised.append(exc)
    return raised


@pytest.mark.parametrize("method", sorted(PARAMS_MODELS))
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_every_accepted_body_runs_to_a_final_state(
    setup: Setup, worker: WorkerContext, method: str, data: st.DataObject
) -> None:
    params = data.draw(valid_params(method), label="params")
    answer = _submit(setup, method, params, data.draw(TARGETS, label="target"))
    event(f"{method}: {answer.status_code} {answer.json().get('code', '')}")
    if answer.status_code != 202:  # refused as a whole: rules across values, the cost
        assert answer.status_code == 422, answer.text
        assert answer.json()["code"] in ("config.bad_parameter", "quota.job_cost"), answer.text
        return
    job_id = answer.json()["id"]
    assert _deliver_until_final(worker, job_id) == []
    with session_scope(setup.sessions) as session:
        job = repo.get_job(session, setup.user.tenant_id, job_id)
        assert job is not None and job.state in FINAL, (job and job.state, params)
        event(f"{method}: job {job.state} {sorted(repo.error_counts(session, job_id))}")
        assert "chunk.max_attempts" not in repo.error_counts(session, job_id)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=bad_bodies())
@example(case=("lime", ISSUE_BODIES[0], "fill"))
@example(case=("lime", ISSUE_BODIES[1], "fill"))
@example(case=("lime", ISSUE_BODIES[2], "num_samples"))
@example(case=("lime", ISSUE_BODIES[3], "num_samples"))
@example(case=("lime", ISSUE_BODIES[4], "batch_size"))
def test_every_bad_value_is_a_422_naming_the_parameter(
    setup: Setup, case: tuple[str, dict[str, Any], str]
) -> None:
    method, params, name = case
    answer = _submit(setup, method, params)
    assert answer.status_code == 422, (method, params, answer.text)
    problem = answer.json()
    assert problem["code"] == "config.bad_parameter", problem
    assert name in problem["detail"] and method in problem["detail"], problem
    assert "allowed:" in problem["detail"] or "does not take" in problem["detail"], problem


def test_the_issue_bodies_were_the_poison(setup: Setup, worker: WorkerContext) -> None:
    """What the API now refuses is what used to loop: the same values, put straight
    into a job row, fail the job with `job.bad_parameters` on its first delivery."""
    from xmlx import jobs

    for params in ISSUE_BODIES:
        created = jobs.create_job(
            setup.sessions, tenant_id=setup.user.tenant_id, kind="explain",
            item_keys=["one.png"], model_id=setup.model_id, idempotency_key=None,
            request_hash=uuid.uuid4().hex, chunk_size=32, max_items=10,
            params={"method": "lime", "params": params, "target": None, "k": 1,
                    "image_prefix": f"tenants/{setup.user.tenant_id}/uploads/p/"},
        )  # fmt: skip
        assert _deliver_until_final(worker, created.job.id) == []
        with session_scope(setup.sessions) as session:
            job = repo.get_job(session, setup.user.tenant_id, created.job.id)
            assert job is not None and job.state == "failed"
            assert repo.error_counts(session, created.job.id) == {"job.bad_parameters": 1}
