"""deploy/kubernetes/ and deploy/Containerfile, checked offline: every manifest against the
Kubernetes JSON schemas (kubernetes-validate, which ships them), the autoscaler against the
review's S-8 and against the series a real GET /metrics exports, and the probes, commands
and image against what medbook serves."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
# Not a Kubernetes object: prometheus-adapter's own configuration.
ADAPTER_RULES = MANIFESTS / "prometheus-adapter-rules.yaml"
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
# The oldest Kubernetes minor still commonly run that has every API used here
# (autoscaling/v2 behavior, policy/v1); validated against the newest the package has too.
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.latest_version())


def objects() -> list[dict]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path != ADAPTER_RULES:
            found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def one(kind: str, component: str) -> dict:
    matches = [
        o
        for o in objects()
        if o["kind"] == kind
        and o["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    assert len(matches) == 1, (kind, component, len(matches))
    return matches[0]


def container(workload: dict) -> dict:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version):
    found = objects()
    kinds = {o["kind"] for o in found}
    assert kinds >= {
        "Deployment",
        "Job",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    for manifest in found:
        # strict: an unknown or misspelt field is an error, not ignored
        kubernetes_validate.validate(manifest, version, strict=True)


def test_a_misspelt_field_is_caught():
    """The validation above can fail: a typo in a probe is refused."""
    web = one("Deployment", "web")
    broken = yaml.safe_load(yaml.safe_dump(web))
    container(broken)["readinessProbe"]["httpGett"] = container(broken)["readinessProbe"].pop(
        "httpGet"
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_the_autoscaler_follows_the_review_s_8():
    hpa = one("HorizontalPodAutoscaler", "web")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": one("Deployment", "web")["metadata"]["name"],
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 20)
    assert "replicas" not in one("Deployment", "web")["spec"]  # the autoscaler owns it
    by_type = {m["type"]: m for m in hpa["metrics"]}
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    assert by_type["Resource"]["resource"]["target"]["averageUtilization"] == 70
    assert by_type["Pods"]["pods"]["target"]["type"] == "AverageValue"
    assert hpa["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 60
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def adapter_series(metric: str) -> set[str]:
    """The series from which prometheus-adapter's rules serve the custom metric `metric`."""
    found = set()
    for rule in yaml.safe_load(ADAPTER_RULES.read_text())["rules"]:
        series = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", rule["seriesQuery"].strip("'"))
        assert series, rule["seriesQuery"]
        name = rule["name"]
        served = re.sub(name["matches"], name["as"], series.group())
        if re.fullmatch(name["matches"], series.group()) and served == metric:
            found.add(series.group())
    return found


async def test_the_autoscaler_s_request_metric_is_in_a_real_scrape(client):
    """The HPA's per-pod metric is served by an adapter rule from a series that GET
    /metrics really exports (after a request, so the counter has a sample)."""
    hpa = one("HorizontalPodAutoscaler", "web")["spec"]
    pods = [m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"]
    assert pods
    assert (await client.get("/health/live")).status_code == 200
    response = await client.get("/metrics")
    assert response.status_code == 200
    scraped = {s.name for f in text_string_to_metric_families(response.text) for s in f.samples}
    for metric in pods:
        series = adapter_series(metric)
        assert series, f"no prometheus-adapter rule serves {metric}"
        assert series <= scraped, series - scraped


def test_probes_commands_and_ports_match_what_medbook_serves():
    web = container(one("Deployment", "web"))
    args = web["args"]
    assert args[0] == "serve"
    port = int(args[args.index("--port") + 1])
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert web["ports"] == [{"name": "http", "containerPort": port}]
    assert web["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert web["livenessProbe"]["httpGet"]["path"] == "/health/live"  # never a dependency
    assert container(one("Deployment", "worker"))["args"] == ["worker"]
    job = one("Job", "migrations")
    assert container(job)["args"] == ["db", "upgrade"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    images = {
        container(one(kind, part))["image"]
        for kind, part in (("Deployment", "web"), ("Deployment", "worker"), ("Job", "migrations"))
    }
    assert len(images) == 1  # one image, one release
    for kind, part in (("Deployment", "web"), ("Deployment", "worker"), ("Job", "migrations")):
        pod = one(kind, part)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
    budgets = {
        one("PodDisruptionBudget", part)["spec"]["selector"]["matchLabels"][
            "app.kubernetes.io/component"
        ]
        for part in ("web", "worker")
    }
    assert budgets == {"web", "worker"}


def test_the_containerfile_is_multi_stage_non_root_with_a_ready_check():
    text = CONTAINERFILE.read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, flags=re.MULTILINE)
    assert len(stages) >= 2
    final = text[text.rindex("\nFROM ") :]
    (user,) = re.findall(r"^USER\s+(\S+)", final, flags=re.MULTILINE)
    assert user.split(":")[0] not in {"0", "root"}
    assert "COPY --from=build" in final
    healthcheck = re.search(r"^HEALTHCHECK .*?(?<!\\)$", final, flags=re.MULTILINE | re.DOTALL)
    assert healthcheck and "/health/ready" in healthcheck.group()
    for source in re.findall(r"^COPY\s+(?!--)(\S+)", text, flags=re.MULTILINE):
        assert (ROOT / source).exists(), source  # every COPY names a file of the repository
