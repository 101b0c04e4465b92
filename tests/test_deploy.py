"""Static validation of deploy/: Dockerfiles, compose stack, Kubernetes manifests.

Docker and a cluster are not available in CI, so every check here is offline: yamllint,
kubernetes-validate's bundled schemas for core resources, vendored JSON schemas
(deploy/schemas/) for compose and the KEDA / kustomize kinds, the real
`xmlx.settings.Settings` for every environment variable the manifests set, and a secret
scanner. Each validator is also shown to REJECT a deliberately broken input.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import math
import os
import re
import secrets
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from xmlx.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SCHEMAS = DEPLOY / "schemas"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
K8S_VERSION = "1.30"  # oldest Kubernetes minor we support
PLACEHOLDER = "change-me"
XMLX_SERVICES = ("migrate", "api", "worker", "worker-default", "beat")
# Variables an xmlx container may set besides Settings fields (read by TensorFlow / CUDA).
NON_SETTINGS_ENV = {
    "TF_FORCE_GPU_ALLOW_GROWTH",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "CUDA_VISIBLE_DEVICES",
    "PROMETHEUS_MULTIPROC_DIR",  # prometheus_client's multiprocess mode (workers.metrics)
}
VENDORED = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject.subset.schema.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda-triggerauthentication.subset.schema.json",
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"): "kustomization.subset.schema.json",
}


# ---------------------------------------------------------------- loading and validators


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@functools.cache
def k8s_docs() -> tuple[dict[str, Any], ...]:
    """Every document of deploy/k8s, parsed once; callers copy before changing one."""
    return tuple(doc for path in sorted(K8S.glob("*.yaml")) for doc in load_docs(path))


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} definitions"
    return matches[0]


def schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text())


def validate_k8s(doc: dict[str, Any]) -> None:
    """Raise if `doc` is not a valid resource: vendored schema, else Kubernetes' own."""
    vendored = VENDORED.get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if vendored:
        jsonschema.Draft202012Validator(schema(vendored)).validate(doc)
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def validate_compose(doc: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(schema("compose-spec.subset.schema.json")).validate(doc)


def yamllint_problems(text: str) -> list[str]:
    config = YamlLintConfig(file=str(DEPLOY / ".yamllint"))
    return [f"{p.line}:{p.column} {p.message}" for p in linter.run(text, config)]


# ---------------------------------------------------------------- environment helpers

_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Docker Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$ escapes."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1), match.group(2), match.group(3)
        value = env.get(name)
        if op and op.startswith(":") and value == "":
            value = None
        if value is None and op and op.endswith("?"):
            raise KeyError(f"required variable {name} is unset: {arg}")
        return value if value is not None else (arg or "")

    return _INTERPOLATION.sub(one, value)


def interpolated_names(text: str) -> dict[str, bool]:
    """Variables compose.yaml interpolates -> whether one use is required (`:?`)."""
    names: dict[str, bool] = {}
    for match in _INTERPOLATION.finditer(text):
        if match.group(1):
            required = bool(match.group(2) and match.group(2).endswith("?"))
            names[match.group(1)] = names.get(match.group(1), False) or required
    return names


def env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def with_real_secrets(env: dict[str, str]) -> dict[str, str]:
    """Placeholders replaced by random values, as an operator would before deploying."""
    return {k: v.replace(PLACEHOLDER, secrets.token_hex(24)) for k, v in env.items()}


def settings_env_names() -> dict[str, str]:
    """Environment variable -> Settings field, as pydantic-settings maps them."""
    prefix = Settings.model_config.get("env_prefix", "")
    names = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        names[(alias or prefix + name).upper()] = name
    return names


def load_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings read from exactly `env` (nothing inherited from the test process)."""
    for key in list(os.environ):
        if key.upper().startswith("XMLX_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def compose_doc() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def compose_env(service: str) -> dict[str, str]:
    """A compose service's environment after interpolation with .env.example."""
    raw = compose_doc()["services"][service].get("environment", {})
    dotenv = with_real_secrets(env_file(ENV_EXAMPLE))
    return {k: interpolate(str(v), dotenv) for k, v in raw.items()}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def k8s_container_env(container: dict[str, Any]) -> dict[str, str]:
    """Everything a container gets from envFrom (ConfigMap / Secret) and env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef")
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        data = find(kind, ref["name"])
        env.update(data.get("data", {}) or {})
        env.update(data.get("stringData", {}) or {})
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def xmlx_containers() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{doc['kind']}/{doc['metadata']['name']}", container)
        for doc in k8s_docs()
        if doc["kind"] in ("Deployment", "Job")
        for container in pod_spec(doc)["containers"]
    ]


def duration_seconds(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


# ---------------------------------------------------------------- YAML lint


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.yaml")), ids=lambda p: p.name)
def test_yaml_files_pass_yamllint(path: Path) -> None:
    assert yamllint_problems(path.read_text()) == []


def test_yamllint_rejects_broken_yaml() -> None:
    assert yamllint_problems("a: 1\na: 2\n  b: [\n")


# ---------------------------------------------------------------- schemas


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_k8s_manifests_validate(path: Path) -> None:
    docs = load_docs(path)
    assert docs
    for doc in docs:
        validate_k8s(doc)


def test_compose_validates_against_compose_spec() -> None:
    validate_compose(compose_doc())


def _drop_selector(doc: dict[str, Any]) -> None:
    del doc["spec"]["selector"]


def _unknown_container_field(doc: dict[str, Any]) -> None:
    pod_spec(doc)["containers"][0]["gpus"] = 1


def _scaledobject_unknown_field(doc: dict[str, Any]) -> None:
    doc["spec"]["maxReplicas"] = doc["spec"].pop("maxReplicaCount")


def _redis_metadata_typo(doc: dict[str, Any]) -> None:
    doc["spec"]["triggers"][0]["metadata"]["listname"] = "gpu"


def _scaledobject_without_triggers(doc: dict[str, Any]) -> None:
    del doc["spec"]["triggers"]


@pytest.mark.parametrize(
    ("kind", "name", "breaks"),
    [
        ("Deployment", "xmlx-api", _drop_selector),
        ("Deployment", "xmlx-worker", _unknown_container_field),
        ("ScaledObject", "xmlx-worker", _scaledobject_unknown_field),
        ("ScaledObject", "xmlx-worker", _redis_metadata_typo),
        ("ScaledObject", "xmlx-worker", _scaledobject_without_triggers),
    ],
)
def test_broken_k8s_manifest_fails_validation(kind, name, breaks, tmp_path: Path) -> None:
    broken = copy.deepcopy(find(kind, name))
    breaks(broken)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(jsonschema.ValidationError):
        for doc in load_docs(path):
            validate_k8s(doc)


@pytest.mark.parametrize(
    "patch",
    [
        {"services": {"worker": {"gpu_count": 1}}},
        {"services": {"api": {"depends_on": {"migrate": {"condition": "service_done"}}}}},
        {"services": {"worker": {"healthcheck": {"test": ["CMD", "true"], "intervall": "5s"}}}},
        {"volumez": {}},
    ],
    ids=["unknown-service-key", "bad-condition", "healthcheck-typo", "unknown-top-level"],
)
def test_broken_compose_fails_validation(patch: dict[str, Any], tmp_path: Path) -> None:
    def merge(into: dict[str, Any], change: dict[str, Any]) -> None:
        for key, value in change.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict) and value:
                merge(into[key], value)
            else:
                into[key] = value

    broken = compose_doc()
    merge(broken, patch)
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(jsonschema.ValidationError):
        validate_compose(yaml.safe_load(path.read_text()))


def test_kustomization_lists_every_manifest_and_image() -> None:
    kustomization = load_docs(K8S / "kustomization.yaml")[0]
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(manifests)
    images = {c["image"].split(":")[0] for _, c in xmlx_containers()}
    assert images == {i["name"] for i in kustomization["images"]} == {"xmlx-api", "xmlx-worker"}


# ---------------------------------------------------------------- environment vs Settings


def all_manifest_env_names() -> dict[str, set[str]]:
    """Every variable name the deploy files set, by where it is set."""
    services = compose_doc()["services"]
    found: dict[str, set[str]] = {
        "compose": {k for s in XMLX_SERVICES for k in services[s].get("environment", {})},
        ".env.example": set(env_file(ENV_EXAMPLE)),
        "k8s": {k for _, c in xmlx_containers() for k in k8s_container_env(c)},
    }
    for kind in ("ConfigMap", "Secret"):
        for doc in (d for d in k8s_docs() if d["kind"] == kind):
            found["k8s"] |= {k for k in {**doc.get("data", {}), **doc.get("stringData", {})}}
    return found


def test_every_xmlx_variable_is_a_settings_field() -> None:
    fields = settings_env_names()
    for where, names in all_manifest_env_names().items():
        unknown = {n for n in names if n.startswith("XMLX_") and n not in fields}
        assert not unknown, f"{where} sets variables Settings does not read: {sorted(unknown)}"


def test_xmlx_containers_set_nothing_but_settings_and_known_runtime_variables() -> None:
    allowed = set(settings_env_names()) | NON_SETTINGS_ENV
    for service in XMLX_SERVICES:
        assert set(compose_env(service)) <= allowed, service
    for where, container in xmlx_containers():
        assert set(k8s_container_env(container)) <= allowed, where


def test_env_example_and_compose_interpolation_agree() -> None:
    used = interpolated_names(COMPOSE.read_text())
    documented = set(env_file(ENV_EXAMPLE))
    assert documented <= set(used), f"unused in compose: {sorted(documented - set(used))}"
    required = {name for name, req in used.items() if req}
    assert required <= documented, f"required but undocumented: {sorted(required - documented)}"


def test_required_settings_fields_are_set_everywhere() -> None:
    env_of_field = {field: env for env, field in settings_env_names().items()}
    required = {env_of_field[n] for n, f in Settings.model_fields.items() if f.is_required()}
    for service in XMLX_SERVICES:
        assert required <= set(compose_env(service)), service
    for where, container in xmlx_containers():
        assert required <= set(k8s_container_env(container)), where


@pytest.mark.parametrize("service", XMLX_SERVICES)
def test_compose_service_environment_is_accepted_by_settings(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(compose_env(service), monkeypatch)
    assert settings.env == "production"
    assert settings.storage_backend == "s3" and not settings.is_sqlite


def test_k8s_pod_environment_is_accepted_by_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    containers = xmlx_containers()
    assert len(containers) == 5  # api, beat, gpu worker, default worker, migrate
    for where, container in containers:
        settings = load_settings(with_real_secrets(k8s_container_env(container)), monkeypatch)
        assert settings.env == "production", where
        assert settings.storage_backend == "s3" and not settings.is_sqlite, where


def test_refused_defaults_would_fail_the_settings_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: each production-critical variable is load-bearing."""
    env = with_real_secrets(k8s_container_env(dict(xmlx_containers())["Deployment/xmlx-api"]))
    for name in ("XMLX_API_KEY_PEPPER", "XMLX_S3_SECRET_KEY", "XMLX_DATABASE_URL"):
        without = {k: v for k, v in env.items() if k != name}
        with pytest.raises(ValueError, match=name):
            load_settings(without, monkeypatch)
    with pytest.raises(ValueError, match="XMLX_API_KEY_PEPPER"):
        load_settings(
            k8s_container_env(dict(xmlx_containers())["Deployment/xmlx-api"]), monkeypatch
        )


# ---------------------------------------------------------------- behaviour of the stack


def test_worker_outlives_its_longest_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Grace period > hard time limit, so scale-in and `compose down` finish the chunk."""
    worker = find("Deployment", "xmlx-worker")
    env = with_real_secrets(k8s_container_env(pod_spec(worker)["containers"][0]))
    hard = load_settings(env, monkeypatch).task_hard_time_limit_seconds
    assert pod_spec(worker)["terminationGracePeriodSeconds"] > hard
    hard = load_settings(compose_env("worker"), monkeypatch).task_hard_time_limit_seconds
    assert duration_seconds(compose_doc()["services"]["worker"]["stop_grace_period"]) > hard


def test_gpu_worker_scheduling() -> None:
    worker = find("Deployment", "xmlx-worker")
    assert "replicas" not in worker["spec"], "KEDA owns the replica count"
    spec = pod_spec(worker)
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert spec["nodeSelector"]
    env = k8s_container_env(container)
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    for where, other in xmlx_containers():
        if where != "Deployment/xmlx-worker":
            assert "nvidia.com/gpu" not in str(other.get("resources")), where
    devices = compose_doc()["services"]["worker"]["deploy"]["resources"]["reservations"]
    assert devices["devices"] == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_keda_scales_the_gpu_queue_from_zero() -> None:
    scaled = find("ScaledObject", "xmlx-worker")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "xmlx-worker"
    assert scaled["minReplicaCount"] == 0 < scaled["maxReplicaCount"]
    trigger, train = scaled["triggers"]
    assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == "gpu"
    assert train["metadata"]["listName"] == "train"
    auth = find("TriggerAuthentication", trigger["authenticationRef"]["name"])
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["key"] in find("Secret", ref["name"])["stringData"]


def test_beat_is_a_singleton_on_the_worker_image() -> None:
    """`celery beat` imports the task modules (Keras), so it cannot run on xmlx-api."""
    beat = find("Deployment", "xmlx-beat")["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"
    assert beat["template"]["spec"]["containers"][0]["image"].startswith("xmlx-worker:")
    service = compose_doc()["services"]["beat"]
    assert service.get("deploy", {}).get("replicas", 1) == 1
    assert service["image"].startswith("xmlx-worker:")


def test_pod_disruption_budgets_select_their_deployments() -> None:
    for name in ("xmlx-api", "xmlx-worker"):
        labels = find("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        selector = find("PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items()


def test_network_policies_deny_by_default_and_open_only_the_data_services() -> None:
    policies = [d["spec"] for d in k8s_docs() if d["kind"] == "NetworkPolicy"]
    assert {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]} in policies
    worker_labels = find("Deployment", "xmlx-worker")["spec"]["template"]["metadata"]["labels"]
    ports = set()
    # The one way into a worker: Prometheus (namespace `monitoring`) to its metrics port.
    scrape = [{"from": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}],
        "ports": [{"protocol": "TCP", "port": 9100}]}]  # fmt: skip
    for policy in policies:
        selected = policy["podSelector"].get("matchLabels", {}).items() <= worker_labels.items()
        if selected and policy.get("ingress") and policy["ingress"] != scrape:
            pytest.fail("a NetworkPolicy lets traffic into the workers")
        webhooks = policy["podSelector"].get("matchLabels", {}).get(
            "app.kubernetes.io/component"
        ) == "worker-default" and any("ipBlock" in peer for rule in policy.get("egress", [])
                                      for peer in rule["to"])  # fmt: skip
        if webhooks:  # receivers on the internet: 80/443 to public addresses only
            (rule,) = policy["egress"]
            assert {p["port"] for p in rule["ports"]} == {80, 443}
            assert {"10.0.0.0/8", "169.254.0.0/16"} <= set(rule["to"][0]["ipBlock"]["except"])
            continue
        ports |= {p["port"] for rule in policy.get("egress", []) for p in rule["ports"]}
    assert ports == {53, 5432, 6379, 9000}


def test_compose_stack_wiring() -> None:
    services = compose_doc()["services"]
    redis_args = services["redis"]["command"]
    assert redis_args[redis_args.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis_args[redis_args.index("--appendonly") + 1] == "yes"
    for name in ("api", "worker", "worker-default", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
    for name in ("postgres", "redis", "minio", "api"):
        assert services[name]["healthcheck"]["test"], name
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    assert all(p.startswith("127.0.0.1:") for p in services["flower"]["ports"])
    assert services["migrate"]["command"] == ["db", "upgrade"]


def queues_of(command: list[str]) -> set[str]:
    assert command[:4] == ["celery", "-A", "workers.celery_app", "worker"], command
    return set(command[command.index("-Q") + 1].split(","))


def worker_commands() -> dict[str, list[str]]:
    """Every Celery worker command line of the deployment, by where it is set."""
    services = compose_doc()["services"]
    commands = {f"compose/{name}": s.get("command", []) for name, s in services.items()}
    commands |= {f"k8s/{where}": c.get("args", []) for where, c in xmlx_containers()}
    stage = dockerfile_final_stage((DEPLOY / "docker" / "worker.Dockerfile").read_text())
    commands["worker.Dockerfile"] = json.loads(dict(stage)["CMD"])
    return {where: c for where, c in commands.items() if c[:1] == ["celery"] and "worker" in c}


def test_every_routed_queue_has_a_consumer_and_gpu_workers_take_gpu_and_train() -> None:
    from workers import celery_app

    routed = {route["queue"] for route in celery_app.TASK_ROUTES.values()}
    commands = worker_commands()
    for prefix in ("compose/", "k8s/"):
        consumed = set().union(*(queues_of(c) for w, c in commands.items() if w.startswith(prefix)))
        assert routed <= consumed, prefix
    gpu = [c for c in commands.values() if celery_app.GPU_QUEUE in queues_of(c)]
    assert len(gpu) == 3  # compose, k8s and the image default agree
    for command in gpu:
        assert command == gpu[0]
        assert queues_of(command) == {celery_app.GPU_QUEUE, celery_app.TRAIN_QUEUE}
        assert command[command.index("--concurrency") + 1] == "1"
    triggers = find("ScaledObject", "xmlx-worker")["spec"]["triggers"]
    lists = {trigger["metadata"]["listName"] for trigger in triggers}
    assert lists == {celery_app.GPU_QUEUE, celery_app.TRAIN_QUEUE}, "KEDA counts these lists"


def test_the_server_is_the_process_that_gets_sigterm() -> None:
    """Celery must be the child of tini itself (warm shutdown); the API must listen on
    every interface, not the CLI's 127.0.0.1 default."""
    worker = dockerfile_final_stage((DEPLOY / "docker" / "worker.Dockerfile").read_text())
    assert json.loads(dict(worker)["ENTRYPOINT"]) == ["tini", "--"]
    api = dockerfile_final_stage((DEPLOY / "docker" / "api.Dockerfile").read_text())
    assert json.loads(dict(api)["CMD"]) == ["api", "--host", "0.0.0.0"]
    assert compose_doc()["services"]["api"]["command"] == ["api", "--host", "0.0.0.0"]
    assert dict(xmlx_containers())["Deployment/xmlx-api"]["args"] == ["api", "--host", "0.0.0.0"]


# ---------------------------------------------------------------- images

DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))


def dockerfile_final_stage(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the last build stage, continuations joined."""
    joined = re.sub(r"\\\n(?:\s*#.*\n)*", " ", text)
    instructions = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, args = line.strip().partition(" ")
            instructions.append((word.upper(), args.strip()))
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    assert starts, "no FROM"
    return instructions[starts[-1] :]


def dockerfile_problems(text: str) -> list[str]:
    stage = dockerfile_final_stage(text)
    words = [word for word, _ in stage]
    problems = []
    users = [args for word, args in stage if word == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the final stage must switch to a non-root USER")
    if "HEALTHCHECK" not in words:
        problems.append("the final stage has no HEALTHCHECK")
    if not {"ENTRYPOINT", "CMD"} & set(words):
        problems.append("no ENTRYPOINT or CMD")
    if any(word == "ADD" and "://" in args for word, args in stage):
        problems.append("ADD from a URL: fetch with checksums in a RUN instead")
    return problems


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lint(path: Path) -> None:
    assert dockerfile_problems(path.read_text()) == []


def test_dockerfile_lint_rejects_root_image_without_healthcheck() -> None:
    text = 'FROM python:3.11-slim AS build\nUSER 1000\nFROM python:3.11-slim\nCMD ["x"]\n'
    assert len(dockerfile_problems(text)) == 2
    assert len(dockerfile_problems(text.replace("CMD", "USER root\nCMD"))) == 2


def test_images_match_their_roles() -> None:
    api = (DEPLOY / "docker" / "api.Dockerfile").read_text()
    worker = (DEPLOY / "docker" / "worker.Dockerfile").read_text()
    assert "--exclude tensorflow tensorflow-cpu" in api
    assert "tensorflow[and-cuda]" in worker and "tini" in worker
    assert "tensorflow" not in re.sub(
        r"#.*|--exclude tensorflow tensorflow-cpu|'tensorflow'", "", api
    )
    assert ("EXPOSE", "8000") in dockerfile_final_stage(api)
    ports = pod_spec(find("Deployment", "xmlx-api"))["containers"][0]["ports"]
    assert ports[0]["containerPort"] == 8000


def test_requirements_script_drops_only_tensorflow() -> None:
    spec = importlib.util.spec_from_file_location(
        "deploy_requirements", DEPLOY / "docker" / "requirements.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    canonical, requirements = module.canonical, module.requirements
    everything = requirements(ROOT / "pyproject.toml", set(), [])
    kept = requirements(ROOT / "pyproject.toml", {"TensorFlow", "tensorflow_cpu"}, [])
    dropped = [line for line in everything if line not in kept]
    assert dropped and all(canonical(line).startswith("tensorflow") for line in dropped)
    assert not any(canonical(line).startswith("tensorflow") for line in kept)
    assert any(line.startswith("celery") for line in kept)


def test_dockerignore_keeps_secrets_out_and_sources_in() -> None:
    patterns = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".env", "**/.env", "deploy/.env"} <= patterns
    needed = {"xmlx", "xmlcore", "api", "workers", "migrations", "alembic.ini", "pyproject.toml"}
    needed |= {"deploy", "deploy/docker"}
    assert not needed & patterns


def test_api_runs_without_tensorflow() -> None:
    """The API image has no TensorFlow: the app and the Celery app it sends through must
    import without it."""
    modules = [
        m
        for m in ("api.app", "workers.celery_app")
        if (ROOT / f"{m.replace('.', '/')}.py").exists()
    ]
    if not modules:
        pytest.skip("api.app and workers.celery_app are not written yet")
    code = (
        "import sys\n"
        "class NoTensorFlow:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'tensorflow':\n"
        "            raise ImportError('TensorFlow is not in the API image')\n"
        "sys.meta_path.insert(0, NoTensorFlow())\n"
        f"for m in {modules!r}:\n"
        "    __import__(m)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMLX_")}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-3000:]


# ---------------------------------------------------------------- secrets

_KNOWN_TOKENS = re.compile(
    r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|xox[abpr]-[A-Za-z0-9-]{10,}|sk-[A-Za-z0-9]{20,}|eyJ[\w-]{10,}\.eyJ[\w-]{10,}"
)
_CREDENTIAL = re.compile(
    r"(?i)\b[\w.-]*(password|passwd|secret|pepper|token|secret_key|private_key|api_key)[\w.-]*"
    r"\s*[:=]\s*[\"']?([^\s\"'#]+)"
)
_URL_PASSWORD = re.compile(r"[a-z+]+://[^:/@\s]*:([^@\s/]+)@")
_PLACEHOLDER_VALUE = re.compile(rf"^(|{PLACEHOLDER}|\$\{{.*|\$\$.*|true|false|\d+)$")


def entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def looks_random(value: str) -> bool:
    return len(value) >= 16 and entropy(value) >= 3.0 and bool(re.search(r"\d", value))


def secret_findings(text: str) -> list[str]:
    """Things in `text` that look like real credentials rather than placeholders."""
    found = [m.group(0)[:12] for m in _KNOWN_TOKENS.finditer(text)]
    for match in _CREDENTIAL.finditer(text):
        value = match.group(2)
        if not _PLACEHOLDER_VALUE.match(value) and looks_random(value):
            found.append(match.group(0)[:40])
    for match in _URL_PASSWORD.finditer(text):
        if not _PLACEHOLDER_VALUE.match(match.group(1)):
            found.append(match.group(0)[:40])
    found += [t for t in re.findall(r"[A-Za-z0-9+_=-]{32,}", text) if entropy(t) >= 4.2]
    return found


def deploy_files() -> list[Path]:
    ignored = {DEPLOY / ".env"}  # the operator's real values, ignored by git (deploy/.gitignore)
    return [p for p in sorted(DEPLOY.rglob("*")) if p.is_file() and p not in ignored]


def test_no_committed_deploy_file_holds_a_secret() -> None:
    files = [*deploy_files(), ROOT / ".dockerignore"]
    assert len(files) > 10
    for path in files:
        if "__pycache__" not in path.parts:
            assert secret_findings(path.read_text()) == [], path


def test_secret_scanner_catches_real_looking_values() -> None:
    planted = {
        f"XMLX_API_KEY_PEPPER: {secrets.token_hex(24)}",
        f"POSTGRES_PASSWORD={secrets.token_urlsafe(18)}7",
        "XMLX_DATABASE_URL: postgresql://xmlx:hunter2@db:5432/xmlx",
        "aws: AKIA" + "ABCDEFGHIJKLMNOP",
        "-----BEGIN RSA PRIVATE KEY-----",
    }
    for line in planted:
        assert secret_findings(line), line
    assert secret_findings("POSTGRES_PASSWORD=change-me\nurl: redis://:change-me@r:6379/0") == []
