"""Offline validation of everything under deploy/: Kubernetes manifests, the KubeRay RayCluster, dagster-ray's KubeRay
resource configuration and the Dagster Helm values.

Core kinds validate strictly against the Kubernetes OpenAPI schemas bundled with `kubernetes-validate`. Custom
resources (ray.io) have no bundled schema: their structure is checked here and every pod template they embed is
validated as a core/v1 PodTemplate. The Helm values are checked against the official chart's value schema (the keys
that chart forbids extras for) and the pods they describe are rendered and validated as a Deployment and a Job.
"""

from __future__ import annotations

import logging
import re
import types
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
HELM_VALUES = DEPLOY / "helm" / "dagster-values.yaml"
KUBERAY_RESOURCE = DEPLOY / "dagster-ray-kuberay.yaml"
RAYCLUSTER = DEPLOY / "kuberay" / "raycluster.yaml"
# The oldest Kubernetes minor the manifests must validate against, and the newest kubernetes-validate knows.
K8S_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
NAMESPACE = "atelier"


def _load_all(path: Path) -> list[Any]:
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def _manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p not in (HELM_VALUES, KUBERAY_RESOURCE))


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p.relative_to(DEPLOY)}#{i}", doc) for p in _manifest_files() for i, doc in enumerate(_load_all(p))]


MANIFESTS = _manifests()
CORE = [(name, doc) for name, doc in MANIFESTS if "." not in doc.get("apiVersion", "").split("/")[0]
        or doc["apiVersion"].split("/")[0].endswith(".k8s.io")]
CUSTOM = [(name, doc) for name, doc in MANIFESTS if (name, doc) not in CORE]


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in MANIFESTS if doc["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in _by_kind(kind) if d["metadata"]["name"] == name]
    return doc


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    (doc,) = _load_all(HELM_VALUES)
    return doc


# Kubernetes' resource.Quantity syntax (the OpenAPI schemas only say "string or integer")
QUANTITY = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?\d+)?")


def _validate(doc: dict[str, Any], version: str) -> None:
    for path, key, value in _walk(doc):
        if key in ("requests", "limits", "sizeLimit") and "resources" in path or key == "sizeLimit":
            for amount in value.values() if isinstance(value, dict) else [value]:
                assert QUANTITY.fullmatch(str(amount)), f"{doc['kind']}: {path}: {amount!r} is not a quantity"
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path)
        raise AssertionError(f"{doc['kind']} {doc.get('metadata', {}).get('name')}: {path}: {exc.message}") \
            from None


def _validate_pod_template(template: dict[str, Any], name: str, version: str) -> None:
    """A pod template embedded in a custom resource, validated as a core/v1 PodTemplate."""
    _validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name, "namespace": NAMESPACE},
               "template": template}, version)


# ---------------------------------------------------------------------------------------------------- inventory


def test_every_deploy_yaml_is_covered():
    """Every YAML file under deploy/ is a manifest file, the Helm values or the dagster-ray config, and parses."""
    assert MANIFESTS, "no manifests under deploy/"
    for path in _manifest_files():
        docs = _load_all(path)
        assert docs, f"{path} is empty"
        for doc in docs:
            assert isinstance(doc, dict) and {"apiVersion", "kind", "metadata"} <= set(doc), \
                f"{path}: not a Kubernetes manifest (apiVersion/kind/metadata) — add a check for it here"
            assert doc["metadata"].get("namespace", NAMESPACE) == NAMESPACE or doc["kind"] == "Namespace", path
    kinds = {doc["kind"] for _, doc in MANIFESTS}
    assert {"Namespace", "ConfigMap", "Secret", "PersistentVolumeClaim", "Role", "RoleBinding", "RayCluster",
            "NetworkPolicy"} <= kinds
    assert [d["apiVersion"] for _, d in CUSTOM] == ["ray.io/v1"], "an unchecked custom resource kind appeared"


# ------------------------------------------------------------------------------------------------- core kinds


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("name", "doc"), CORE, ids=[name for name, _ in CORE])
def test_core_manifest_validates_strictly(name, doc, version):
    _validate(doc, version)


# -------------------------------------------------------------------------------------------------- RayCluster


def _gpu_limit(container: dict[str, Any]) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def check_ray_cluster_spec(spec: dict[str, Any], where: str, version: str) -> None:
    """Structure KubeRay needs (ray.io/v1 RayClusterSpec), plus every embedded pod template as a core PodTemplate."""
    import ray

    assert spec["rayVersion"] == ray.__version__ == "2.60.0", where
    assert spec["enableInTreeAutoscaling"] is True, f"{where}: the GPU group must autoscale"
    head = spec["headGroupSpec"]
    assert isinstance(head.get("rayStartParams"), dict), f"{where}: headGroupSpec.rayStartParams is required"
    head_containers = head["template"]["spec"]["containers"]
    assert head_containers and all(_gpu_limit(c) == 0 for c in head_containers), f"{where}: the head is CPU-only"
    _validate_pod_template(head["template"], f"{where}-head", version)

    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups), f"{where}: duplicate groupName"
    for group in groups:
        label = f"{where}/{group['groupName']}"
        assert isinstance(group.get("rayStartParams"), dict), f"{label}: rayStartParams is required"
        assert 0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"], label
        assert group["template"]["spec"]["containers"], label
        _validate_pod_template(group["template"], label, version)
    gpu = [g for g in groups if any(_gpu_limit(c) > 0 for c in g["template"]["spec"]["containers"])]
    assert gpu, f"{where}: no worker group asks for nvidia.com/gpu"
    for group in gpu:
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1, f"{where}: GPU group must scale from zero"
        for container in group["template"]["spec"]["containers"]:
            requests = container["resources"].get("requests", {})
            assert requests.get("nvidia.com/gpu", container["resources"]["limits"]["nvidia.com/gpu"]) == \
                container["resources"]["limits"]["nvidia.com/gpu"], "extended resources: requests must equal limits"


def _images(spec: dict[str, Any]) -> set[str]:
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    return {c.get("image") for t in templates for c in t["spec"]["containers"]}


def _user_image(values: dict[str, Any]) -> str:
    image = values["dagster-user-deployments"]["deployments"][0]["image"]
    return f"{image['repository']}:{image['tag']}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_raycluster(values, version):
    (doc,) = _load_all(RAYCLUSTER)
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    check_ray_cluster_spec(doc["spec"], "raycluster", version)
    assert _images(doc["spec"]) == {_user_image(values)}, "Ray must run the code location's image"
    ports = {p["containerPort"] for p in doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]}
    assert 10001 in ports, "the Ray Client port that RAY_ADDRESS points at"


# ------------------------------------------------------------------------------------ dagster-ray KubeRay resource


def _kuberay_resource():
    from dagster_ray.kuberay import KubeRayInteractiveJob

    (doc,) = _load_all(KUBERAY_RESOURCE)
    return KubeRayInteractiveJob(**doc["resources"]["ray_cluster"]["config"])


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_dagster_ray_kuberay_config_builds_a_valid_rayjob(values, version):
    """The config loads into dagster-ray's KubeRayInteractiveJob and renders the RayJob it would create."""
    resource = _kuberay_resource()
    assert resource.namespace == NAMESPACE
    assert resource.ray_job.spec.submission_mode == "InteractiveMode"
    context = types.SimpleNamespace(log=logging.getLogger(__name__), dagster_run=None)
    image = _user_image(values)  # at run time: the run's `dagster/image` tag
    manifest = resource.ray_job.to_k8s(context, image=image, labels={"dagster/run-id": "0123abcd"},
                                       env_vars={"ATELIER_EXAMPLE": "1"})
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayJob")
    assert manifest["spec"]["submissionMode"] == "InteractiveMode"
    assert manifest["spec"]["shutdownAfterJobFinishes"] is True
    check_ray_cluster_spec(manifest["spec"]["rayClusterSpec"], "rayjob", version)
    assert _images(manifest["spec"]["rayClusterSpec"]) == {image}, "dagster-ray injects the run's image"


def test_kuberay_and_static_cluster_agree():
    """The per-run cluster (dagster-ray) and the long-lived RayCluster describe the same groups and resources."""
    (static,) = _load_all(RAYCLUSTER)
    per_run = _kuberay_resource().ray_job.spec.ray_cluster_spec
    assert per_run.ray_version == static["spec"]["rayVersion"]

    def shape(groups):
        return {g["groupName"]: [c["resources"] for c in g["template"]["spec"]["containers"]] for g in groups}

    assert shape(per_run.worker_group_specs) == shape(static["spec"]["workerGroupSpecs"])


# ------------------------------------------------------------------------------------------------ Helm values

# Keys of the official chart's values (helm/dagster/schema in dagster-io/dagster) for the sections whose schema
# forbids extra keys: a typo there makes `helm install` fail its values.schema.json check.
CHART_TOP_LEVEL = {
    "global", "nameOverride", "fullnameOverride", "rbacEnabled", "dagsterWebserver", "dagster-user-deployments",
    "postgresql", "generatePostgresqlPasswordSecret", "generateCeleryConfigSecret", "rabbitmq", "redis", "flower",
    "ingress", "imagePullSecrets", "computeLogManager", "scheduler", "runLauncher", "pythonLogs", "dagsterDaemon",
    "busybox", "migrate", "telemetry", "serviceAccount", "retention", "concurrency", "additionalInstanceConfig",
    "defsStateStorage",
}
K8S_RUN_LAUNCHER_KEYS = {
    "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile", "envConfigMaps",
    "envSecrets", "envVars", "volumeMounts", "volumes", "labels", "failPodOnRunFailure", "resources",
    "schedulerName", "securityContext", "runK8sConfig",
}
RUN_K8S_CONFIG_KEYS = {"containerConfig", "podSpecConfig", "podTemplateSpecMetadata", "jobSpecConfig", "jobMetadata"}
USER_DEPLOYMENT_KEYS = {
    "name", "image", "port", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns", "env",
    "envConfigMaps", "envSecrets", "annotations", "nodeSelector", "affinity", "tolerations", "podSecurityContext",
    "securityContext", "resources", "livenessProbe", "readinessProbe", "startupProbe", "labels", "volumeMounts",
    "volumes", "schedulerName", "replicaCount", "service",
}
POSTGRESQL_KEYS = {"postgresqlScheme", "image", "enabled", "postgresqlHost", "postgresqlUsername",
                   "postgresqlPassword", "postgresqlDatabase", "postgresqlParams", "service"}
DAEMON_KEYS = {
    "schedulerName", "volumeMounts", "volumes", "enabled", "image", "runCoordinator", "heartbeatTolerance", "env",
    "envConfigMaps", "envSecrets", "deploymentLabels", "labels", "nodeSelector", "affinity", "tolerations",
    "podSecurityContext", "securityContext", "resources", "livenessProbe", "readinessProbe", "startupProbe",
    "annotations", "runMonitoring", "runRetries", "sensors", "schedules",
}


def test_helm_values_match_the_chart(values):
    assert set(values) <= CHART_TOP_LEVEL, set(values) - CHART_TOP_LEVEL

    launcher = values["runLauncher"]
    assert set(launcher) <= {"type", "config"} and launcher["type"] == "K8sRunLauncher"
    k8s = launcher["config"]["k8sRunLauncher"]
    assert set(k8s) <= K8S_RUN_LAUNCHER_KEYS, set(k8s) - K8S_RUN_LAUNCHER_KEYS
    assert {"imagePullPolicy", "loadInclusterConfig", "envConfigMaps", "envSecrets", "envVars", "volumeMounts",
            "volumes"} <= set(k8s), "required by the chart's K8sRunLauncherConfig"
    assert set(k8s.get("runK8sConfig", {})) <= RUN_K8S_CONFIG_KEYS

    # Postgres holds run, event-log and schedule storage; its password comes from a pre-created Secret
    postgres = values["postgresql"]
    assert set(postgres) <= POSTGRESQL_KEYS, set(postgres) - POSTGRESQL_KEYS
    assert postgres["postgresqlHost"] and postgres["postgresqlDatabase"] and postgres["postgresqlUsername"]
    assert values["generatePostgresqlPasswordSecret"] is False and postgres["postgresqlPassword"] == ""
    secret = _one("Secret", values["global"]["postgresqlSecretName"])
    assert "postgresql-password" in {**secret.get("data", {}), **secret.get("stringData", {})}

    daemon = values["dagsterDaemon"]
    assert set(daemon) <= DAEMON_KEYS and daemon["enabled"] is True, "schedules and sensors need the daemon"
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert values["scheduler"]["type"] == "DagsterDaemonScheduler"

    users = values["dagster-user-deployments"]
    assert users["enabled"] is True and users["enableSubchart"] is True
    (deployment,) = users["deployments"]
    assert set(deployment) <= USER_DEPLOYMENT_KEYS, set(deployment) - USER_DEPLOYMENT_KEYS
    assert {"repository", "tag", "pullPolicy"} <= set(deployment["image"]) and deployment["image"]["tag"] != "latest"
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "orchestration.definitions"]
    assert isinstance(deployment["port"], int)
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True


def test_helm_values_reference_existing_objects(values):
    """ConfigMaps, Secrets, claims and the ServiceAccount named in the values exist in deploy/k8s."""
    deployment = values["dagster-user-deployments"]["deployments"][0]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    for ref in deployment["envConfigMaps"] + launcher["envConfigMaps"]:
        _one("ConfigMap", ref["name"])
    for ref in deployment["envSecrets"] + launcher["envSecrets"]:
        _one("Secret", ref["name"])
    for env in deployment["env"]:
        if "valueFrom" in env:
            key_ref = env["valueFrom"]["secretKeyRef"]
            assert key_ref["key"] in _one("Secret", key_ref["name"])["stringData"], env
    for volume in deployment["volumes"] + launcher["volumes"]:
        _one("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    (binding,) = _by_kind("RoleBinding")
    assert {s["name"] for s in binding["subjects"]} == {values["global"]["serviceAccountName"],
                                                        values["serviceAccount"]["name"]}


def test_runtime_environment(values):
    """Every variable the code reads is set, RAY_ADDRESS names the RayCluster's head service, cron is valid."""
    from dagster._utils.schedules import is_valid_cron_string

    config = _one("ConfigMap", "atelier-env")["data"]
    assert {"ATELIER_STORAGE", "ATELIER_WEIGHTS_DIR", "ATELIER_SOURCE_ROOTS", "ATELIER_RECURATION_CRON"} <= set(config)
    assert config["ATELIER_STORAGE"].startswith(("s3://", "gs://", "/"))
    assert is_valid_cron_string(config["ATELIER_RECURATION_CRON"])
    # Ray reads RAY_ADDRESS when it starts, and the Ray pods load this ConfigMap: it must not be there
    assert "RAY_ADDRESS" not in config
    env = {e["name"]: e for e in values["dagster-user-deployments"]["deployments"][0]["env"]}
    (cluster,) = _load_all(RAYCLUSTER)
    name, namespace = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    assert re.fullmatch(rf"ray://{name}-head-svc(\.{namespace}(\.svc(\.cluster\.local)?)?)?:10001",
                        env["RAY_ADDRESS"]["value"])
    mounts = values["dagster-user-deployments"]["deployments"][0]["volumeMounts"]
    assert config["ATELIER_WEIGHTS_DIR"] in {m["mountPath"] for m in mounts}


def _pod_spec_from_values(source: dict[str, Any], image: str, **container: Any) -> dict[str, Any]:
    env = source.get("env", [])
    if isinstance(env, dict):
        env = [{"name": k, "value": v} for k, v in env.items()]
    env_from = [{"configMapRef": {"name": r["name"]}} for r in source.get("envConfigMaps", [])]
    env_from += [{"secretRef": {"name": r["name"]}} for r in source.get("envSecrets", [])]
    return {
        "containers": [{"name": "dagster", "image": image, "env": env, "envFrom": env_from,
                        "volumeMounts": source.get("volumeMounts", []), **container}],
        "volumes": source.get("volumes", []),
    }


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_helm_user_deployment_renders_to_a_valid_deployment(values, version):
    """The user-code Deployment the chart renders from these values (the parts that come from them)."""
    deployment = values["dagster-user-deployments"]["deployments"][0]
    labels = {"app.kubernetes.io/name": "dagster-user-deployments", "deployment": deployment["name"],
              **deployment.get("labels", {})}
    spec = _pod_spec_from_values(
        deployment, _user_image(values), imagePullPolicy=deployment["image"]["pullPolicy"],
        args=["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", str(deployment["port"]),
              *deployment["dagsterApiGrpcArgs"]],
        ports=[{"name": "grpc", "containerPort": deployment["port"]}], resources=deployment.get("resources", {}))
    _validate({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": f"dagster-{deployment['name']}", "namespace": NAMESPACE},
               "spec": {"replicas": deployment.get("replicaCount", 1), "selector": {"matchLabels": labels},
                        "template": {"metadata": {"labels": labels}, "spec": spec}}}, version)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_helm_run_launcher_renders_to_a_valid_job(values, version):
    """The Kubernetes Job the K8sRunLauncher launches for a run, from the launcher's values."""
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    run_config = launcher.get("runK8sConfig", {})
    spec = _pod_spec_from_values(launcher, _user_image(values), imagePullPolicy=launcher["imagePullPolicy"],
                                 args=["dagster", "api", "execute_run", "{}"],
                                 **run_config.get("containerConfig", {}))
    spec.update(restartPolicy="Never", serviceAccountName=values["global"]["serviceAccountName"],
                **run_config.get("podSpecConfig", {}))
    _validate({"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": "dagster-run-0123abcd", "namespace": NAMESPACE},
               "spec": {"backoffLimit": 0, **run_config.get("jobSpecConfig", {}),
                        "template": {"spec": spec}}}, version)


# -------------------------------------------------------------------------------------------- no inline secrets

SENSITIVE_NAME = re.compile(r"password|passwd|secret|token|credential|private|access_key|api_key", re.I)
CREDENTIAL_TEXT = [
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@\"']+:[^/\s@\"'$]+@"), "a URI with an inline password"),
    (re.compile(r"--from-literal=[\w.-]+=(?![\"']?\$)\S+"), "a literal secret value on a kubectl command line"),
    (re.compile(r"(?i)\b(password|secret|token)\s*[:=]\s*[\"']?(?!\$|\"|'|$)[A-Za-z0-9+/_.-]{8,}"), "a secret value"),
]


def _walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{path}/{key}", key, value
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def _yaml_documents() -> list[tuple[str, Any]]:
    return [(f"{p.relative_to(DEPLOY)}#{i}", doc) for p in sorted(DEPLOY.rglob("*.yaml"))
            for i, doc in enumerate(_load_all(p))]


@pytest.mark.parametrize(("name", "doc"), _yaml_documents(), ids=[name for name, _ in _yaml_documents()])
def test_no_inline_secret_values_in_yaml(name, doc):
    if isinstance(doc, dict) and doc.get("kind") == "Secret":
        for key, value in {**doc.get("data", {}), **doc.get("stringData", {})}.items():
            assert value in ("", None), f"{name}: Secret {doc['metadata']['name']} carries a value for {key}"
    for path, key, value in _walk(doc):
        # a sensitive-looking key with a literal value; names of Secrets and keys inside them are references
        if isinstance(key, str) and SENSITIVE_NAME.search(key) and isinstance(value, str) and value \
                and not key.lower().endswith("name") and "/stringData/" not in path and "/data/" not in path:
            raise AssertionError(f"{name}: {path} = {value!r} looks like an inline secret")
        # container env: a sensitive variable must come from valueFrom (secretKeyRef), never `value`
        if key == "env" and isinstance(value, list):
            for entry in value:
                if isinstance(entry, dict) and SENSITIVE_NAME.search(str(entry.get("name", ""))):
                    assert "value" not in entry, f"{name}: {path}: {entry['name']} is inline, use secretKeyRef"
                    assert "secretKeyRef" in entry.get("valueFrom", {}), f"{name}: {path}: {entry['name']}"


@pytest.mark.parametrize("path", sorted(p for p in DEPLOY.rglob("*") if p.is_file()),
                         ids=lambda p: str(p.relative_to(DEPLOY)))
def test_no_credentials_in_any_deploy_file(path):
    text = path.read_text(encoding="utf-8")
    for pattern, what in CREDENTIAL_TEXT:
        match = pattern.search(text)
        assert match is None, f"{path.relative_to(REPO)} contains {what}: {match.group(0)!r}"


def test_atelier_ray_selects_the_ray_cluster_resource(monkeypatch, tmp_path):
    from dagster_ray.kuberay import KubeRayInteractiveJob

    from orchestration.resources import AtelierRay, ray_resource

    monkeypatch.delenv("ATELIER_RAY", raising=False)
    assert isinstance(ray_resource(2), AtelierRay)
    monkeypatch.setenv("ATELIER_RAY", "kuberay")
    resource = ray_resource()
    assert isinstance(resource, KubeRayInteractiveJob)  # built offline: nothing connects until a run starts
    assert resource.ray_job.metadata["namespace"] == "atelier" and resource.timeout == 1200
    monkeypatch.setenv("ATELIER_KUBERAY_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match="ATELIER_KUBERAY_CONFIG"):
        ray_resource()
    monkeypatch.setenv("ATELIER_RAY", "slurm")
    with pytest.raises(ValueError, match="expected 'local' or 'kuberay'"):
        ray_resource()
