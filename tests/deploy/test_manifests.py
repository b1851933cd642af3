"""Every overlay of deploy/k8s renders and every object validates against the Kubernetes schemas of a
pinned version; the manifests agree with the code (roles, health service names, drain times) and keep
secrets out; prod has what a platform team expects (replicas, HPA, PDBs, zones, NetworkPolicies)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from gateway.config import GatewayConfig
from gateway.server import _uvicorn_config
from launcher.cli import build_parser
from services import catalog
from tests.deploy.kubelet import ROOT, by_kind
from tests.deploy.kustomize import KustomizeError, Obj, containers, render

KUBERNETES = "1.37.0"  # the schemas kubernetes-validate ships for this version (pinned in pyproject)
OVERLAYS = ROOT / "deploy" / "k8s" / "overlays"
ROLES = ("emma-edgelink", "emma-api", "emma-market-worker", "emma-gateway")
POOL_CLOSE_S = 10  # services.cloud.hosted_services waits this long at most for the pool to close


def rendered(overlay: str) -> list[Obj]:
    return render(OVERLAYS / overlay)


@pytest.mark.parametrize("overlay", ["dev", "prod", "cnpg"])
def test_every_object_of_every_overlay_validates_strictly(overlay: str) -> None:
    objects = rendered(overlay)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Job", "Service", "Ingress", "ConfigMap"} <= kinds
    for obj in objects:
        if obj["kind"] == "Cluster":  # CloudNativePG's resource: no schema in Kubernetes itself
            assert obj["apiVersion"] == "postgresql.cnpg.io/v1" and overlay == "cnpg"
            continue
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def test_validation_catches_a_misspelt_field() -> None:
    deployment = copy.deepcopy(by_kind(rendered("dev"), "Deployment")["emma-api"])
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nreplicas:\n  - name: x\n    count: 2\n")
    with pytest.raises(KustomizeError, match=r"unsupported field.*replicas"):
        render(tmp_path)


def test_a_config_change_renames_the_config_map_and_every_reference_follows(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "resources:\n  - " + str(OVERLAYS / "dev") + "\nconfigMapGenerator:\n  - name: emma-config\n"
        "    behavior: merge\n    literals:\n      - EMMA_LOG_LEVEL=WARNING\n"
    )
    before, after = rendered("dev"), render(tmp_path)
    (old,), (new,) = by_kind(before, "ConfigMap"), by_kind(after, "ConfigMap")
    assert old != new and new.startswith("emma-config-")
    refs = {
        source["configMapRef"]["name"]
        for obj in after
        for c in containers(obj)
        for source in c.get("envFrom", [])
        if "configMapRef" in source
    }
    assert refs == {new}


def serve_args(deployment: Obj) -> list[str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return list(container["args"])


def test_every_role_is_a_command_the_cli_accepts_and_every_service_is_hosted() -> None:
    deployments = by_kind(rendered("prod"), "Deployment")
    assert set(deployments) == set(ROLES)
    hosted: set[str] = set()
    parser = build_parser()
    for name, deployment in deployments.items():
        args = parser.parse_args(serve_args(deployment))
        if args.command == "serve":
            hosted |= {spec.key for spec in catalog.resolve(args.services)}
        else:
            assert (name, args.command) == ("emma-gateway", "gateway")
    assert hosted == set(catalog.SERVICES)
    job = by_kind(rendered("prod"), "Job")["emma-migrate"]
    assert parser.parse_args(job["spec"]["template"]["spec"]["containers"][0]["args"]).command == "migrate"


def test_every_grpc_probe_asks_for_a_service_its_pod_hosts() -> None:
    for name, deployment in by_kind(rendered("prod"), "Deployment").items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        probes = [container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
        if name == "emma-gateway":
            assert all(p["httpGet"]["path"] == "/healthz" for p in probes)
            continue
        services = {
            spec.full_name for spec in catalog.resolve(build_parser().parse_args(serve_args(deployment)).services)
        }
        for probe in probes:
            assert probe["grpc"]["port"] == container["ports"][0]["containerPort"]
            assert probe["grpc"].get("service", "") in services | {""}, (name, probe)


def test_the_grace_period_covers_pre_stop_and_the_drain_the_code_does() -> None:
    objects = rendered("prod")
    (config,) = by_kind(objects, "ConfigMap").values()
    drain_s = float(config["data"]["EMMA_SHUTDOWN_GRACE_S"])
    gateway_drain_s = _uvicorn_config(GatewayConfig()).timeout_graceful_shutdown
    assert gateway_drain_s is not None
    for name, deployment in by_kind(objects, "Deployment").items():
        spec = deployment["spec"]["template"]["spec"]
        pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        needed = pre_stop + (gateway_drain_s if name == "emma-gateway" else drain_s + POOL_CLOSE_S)
        assert spec["terminationGracePeriodSeconds"] > needed, name


SECRET_NAME = re.compile(r"DATABASE_URL|KEY|TOKEN|PASSWORD|SECRET", re.IGNORECASE)


@pytest.mark.parametrize("overlay", ["dev", "prod", "cnpg"])
def test_no_secret_value_is_in_the_manifests(overlay: str) -> None:
    objects = rendered(overlay)
    assert not by_kind(objects, "Secret")
    for config in by_kind(objects, "ConfigMap").values():
        assert not [k for k in config["data"] if SECRET_NAME.search(k)], config["data"]
    for obj in objects:
        for container in containers(obj):
            for var in container.get("env", []):
                if SECRET_NAME.search(var["name"]):
                    assert "secretKeyRef" in var.get("valueFrom", {}), (obj["metadata"]["name"], var)


def test_pods_run_as_a_non_root_user_on_a_read_only_root() -> None:
    for obj in rendered("prod"):
        for container in containers(obj):
            pod = obj["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
            assert pod["serviceAccountName"] == "emma"  # whose token is never mounted (below)
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
            assert security["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]
            assert container["image"] == "registry.example.com/emma:0.1.0"
    assert by_kind(rendered("prod"), "ServiceAccount")["emma"]["automountServiceAccountToken"] is False


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if selector.get("matchLabels", {}).items() - labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_prod_spreads_replicas_over_zones_with_budgets_and_autoscaling() -> None:
    objects = rendered("prod")
    budgets = by_kind(objects, "PodDisruptionBudget").values()
    scalers = {h["spec"]["scaleTargetRef"]["name"]: h for h in by_kind(objects, "HorizontalPodAutoscaler").values()}
    for name, deployment in by_kind(objects, "Deployment").items():
        assert deployment["spec"]["replicas"] >= 2, name
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert sum(selects(b["spec"]["selector"], labels) for b in budgets) == 1, name
        terms = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"
        ]
        assert "topology.kubernetes.io/zone" in {t["podAffinityTerm"]["topologyKey"] for t in terms}, name
        if name != "emma-market-worker":
            assert scalers[name]["spec"]["minReplicas"] == deployment["spec"]["replicas"], name


def allowed_ingress(objects: list[Obj], labels: dict[str, str]) -> list[dict[str, Any]]:
    return [
        rule
        for policy in by_kind(objects, "NetworkPolicy").values()
        if selects(policy["spec"]["podSelector"], labels) and "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get("ingress", [])
    ]


def test_prod_network_allows_only_the_architectures_paths() -> None:
    objects = rendered("prod")
    policies = by_kind(objects, "NetworkPolicy")
    deny = policies["emma-default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"} and "ingress" not in deny
    deployments = by_kind(objects, "Deployment")
    pods = {n: d["spec"]["template"]["metadata"]["labels"] for n, d in deployments.items()}
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}

    def app_ingress(name: str) -> list[dict[str, Any]]:
        """The rules besides Prometheus', which reaches every Deployment on its scrape port and no other."""
        rules = allowed_ingress(objects, pods[name])
        scrape = [r for r in rules if r.get("from") == [monitoring]]
        port = int(deployments[name]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"])
        assert [r["ports"] for r in scrape] == [[{"protocol": "TCP", "port": port}]], name
        return [r for r in rules if r not in scrape]

    # The API takes calls from the gateway only; the market worker from nobody; the gateway from the
    # ingress controller; EdgeLink from anywhere (edges on the internet), on its gRPC port only.
    (api,) = app_ingress("emma-api")
    assert api["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "emma-gateway"}}}]
    assert app_ingress("emma-market-worker") == []
    (gateway,) = app_ingress("emma-gateway")
    assert gateway["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ingress-nginx"}
    (edgelink,) = app_ingress("emma-edgelink")
    assert "from" not in edgelink and edgelink["ports"] == [{"protocol": "TCP", "port": 50051}]
    # Egress to the internet's HTTPS only for the market worker.
    https = [
        p["metadata"]["name"]
        for p in policies.values()
        for rule in p["spec"].get("egress", [])
        if {"protocol": "TCP", "port": 443} in rule.get("ports", [])
    ]
    assert https == ["emma-market-sources"]


def test_the_gateway_reaches_the_api_through_the_headless_service() -> None:
    objects = rendered("prod")
    service = by_kind(objects, "Service")["emma-api-grpc"]
    assert service["spec"]["clusterIP"] == "None"
    (container,) = by_kind(objects, "Deployment")["emma-gateway"]["spec"]["template"]["spec"]["containers"]
    target = next(v["value"] for v in container["env"] if v["name"] == "EMMA_GATEWAY_TARGET")
    assert target == f"dns:///emma-api-grpc:{service['spec']['ports'][0]['port']}"
    assert GatewayConfig.from_env({"EMMA_GATEWAY_TARGET": target}).target == target


def test_cnpg_takes_the_database_url_from_the_operators_secret() -> None:
    objects = rendered("cnpg")
    for obj in objects:
        for container in containers(obj):
            (url,) = [v for v in container.get("env", []) if v["name"] == "DATABASE_URL"] or [None]
            if obj["metadata"]["name"] == "emma-gateway":
                assert url is None  # the gateway never talks to the database
                continue
            assert url is not None and url["valueFrom"]["secretKeyRef"] == {"name": "emma-db-app", "key": "uri"}
    (cluster,) = [o for o in objects if o["kind"] == "Cluster"]
    assert (
        cluster["metadata"]["namespace"] == "emma"
        and "timescaledb" in cluster["spec"]["postgresql"]["shared_preload_libraries"]
    )


def test_only_the_pods_behind_the_gateway_trust_x_forwarded_for() -> None:
    objects = rendered("prod")
    (config,) = by_kind(objects, "ConfigMap").values()
    assert "EMMA_TRUST_FORWARDED_FOR" not in config["data"]
    trusting = {
        obj["metadata"]["name"]
        for obj in objects
        for container in containers(obj)
        for var in container.get("env", [])
        if var["name"] == "EMMA_TRUST_FORWARDED_FOR" and var.get("value") == "1"
    }
    assert trusting == {"emma-api"}
    labels = by_kind(objects, "Deployment")["emma-api"]["spec"]["template"]["metadata"]["labels"]
    rules = allowed_ingress(objects, labels)
    # Only the gateway reaches the gRPC port, where the metadata arrives (Prometheus only :9464).
    (api,) = [r for r in rules if {"protocol": "TCP", "port": 50051} in r["ports"]]
    assert api["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "emma-gateway"}}}]
