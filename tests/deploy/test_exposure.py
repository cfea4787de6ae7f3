"""What the deployment exposes: Ray's token auth on everywhere, Ray reachable only from Ray's pods, Dagster's Ray
clients and the KubeRay operator, nothing on a node's network."""

from __future__ import annotations

from typing import Any

from tests.deploy.test_manifests import (
    DEPLOY,
    HELM_VALUES,
    MANIFESTS,
    RAYCLUSTER,
    _kuberay_resource,
    _load_all,
    _one,
)

TOKEN_SECRET = "atelier-ray-auth"


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels AND every matchExpression)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def _ray_specs() -> list[tuple[str, dict[str, Any]]]:
    (static,) = _load_all(RAYCLUSTER)
    (doc,) = _load_all(DEPLOY / "dagster-ray-kuberay.yaml")
    per_run = doc["resources"]["ray_cluster"]["config"]["ray_job"]["spec"]["ray_cluster_spec"]
    specs = [("raycluster", static["spec"]),
             ("per-run", {"headGroupSpec": per_run["head_group_spec"],
                          "workerGroupSpecs": per_run["worker_group_specs"]})]
    return specs


def _templates(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


def _values() -> dict[str, Any]:
    (doc,) = _load_all(HELM_VALUES)
    return doc


def test_ray_token_auth_is_on_for_every_ray_pod_and_client():
    assert _one("ConfigMap", "atelier-env")["data"]["RAY_AUTH_MODE"] == "token"
    assert "RAY_AUTH_TOKEN" in _one("Secret", TOKEN_SECRET)["stringData"]
    for where, spec in _ray_specs():
        for template in _templates(spec):
            for container in template["spec"]["containers"]:
                refs = [e["secretRef"] for e in container.get("envFrom", []) if "secretRef" in e]
                assert {"name": TOKEN_SECRET} in refs, f"{where}/{container['name']}: no (mandatory) token Secret"
                assert all(e.get("name") != "RAY_AUTH_MODE" for e in container.get("env", [])), where
    values = _values()
    deployment = values["dagster-user-deployments"]["deployments"][0]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    for source in (deployment, launcher):
        assert {"name": TOKEN_SECRET} in source["envSecrets"]
        assert "atelier-env" in {r["name"] for r in source["envConfigMaps"]}
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "RAY_AUTH_MODE=disabled" not in dockerfile.replace(" ", "")


def test_the_rendered_rayjob_carries_the_token_too():
    import logging
    import types

    context = types.SimpleNamespace(log=logging.getLogger(__name__), dagster_run=None)
    manifest = _kuberay_resource().ray_job.to_k8s(context, image="img:1", labels={}, env_vars={})
    spec = manifest["spec"]["rayClusterSpec"]
    for template in _templates(spec):
        for container in template["spec"]["containers"]:
            assert {"secretRef": {"name": TOKEN_SECRET}} in container["envFrom"]


def test_nothing_on_a_node_network_or_outside_the_cluster():
    for where, spec in _ray_specs():
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", where
        for template in _templates(spec):
            pod = template["spec"]
            assert not pod.get("hostNetwork") and not pod.get("hostPID"), where
            assert all("hostPort" not in p for c in pod["containers"] for p in c.get("ports", [])), where
    for _, doc in MANIFESTS:
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", doc["metadata"]["name"]
    assert _values()["dagsterWebserver"]["service"]["type"] == "ClusterIP"
    assert "ingress" not in _values() or not _values()["ingress"].get("enabled")


def test_network_policy_admits_only_ray_dagster_clients_and_the_operator():
    (policy,) = [d for _, d in MANIFESTS if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "atelier-ray"]
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    ray_pods = [t["metadata"]["labels"] for _, s in _ray_specs() for t in _templates(s)]
    assert all(_matches(spec["podSelector"], labels) for labels in ray_pods), "a Ray pod escapes the policy"
    values = _values()
    dagster_pods = {
        "user code": values["dagster-user-deployments"]["deployments"][0]["labels"],
        "run": values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podTemplateSpecMetadata"]["labels"],
    }
    outsider = {"app.kubernetes.io/part-of": "atelier", "app.kubernetes.io/name": "dagster-webserver"}
    admitted_dagster = set()
    for rule in spec["ingress"]:
        assert rule.get("from"), "a rule without `from` admits every source"
        for peer in rule["from"]:
            assert "ipBlock" not in peer, "no address ranges: admit pods by label"
            selector = peer.get("podSelector")
            assert selector, "a namespace without a pod selector admits all its pods"
            assert selector.get("matchLabels") or selector.get("matchExpressions"), "an empty selector admits all"
            assert not _matches(selector, outsider) or "namespaceSelector" in peer
            admitted_dagster |= {name for name, labels in dagster_pods.items()
                                 if "namespaceSelector" not in peer and _matches(selector, labels)}
            if not all(_matches(selector, labels) for labels in ray_pods):  # a non-Ray source: named ports only
                assert {p["port"] for p in rule.get("ports", [])} <= {10001, 8265}, rule
    assert admitted_dagster == set(dagster_pods), "Dagster's Ray clients must be admitted"
