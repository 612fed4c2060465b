"""The Kubernetes manifests in k8s/: schema-valid, and the production policies hold.

No cluster here, so the properties are checked on the files themselves:
- every Kubernetes resource validates strictly (unknown fields are errors) with
  kubernetes-validate's bundled, offline schemas for a current Kubernetes version;
- the CloudNativePG and Barman Cloud resources (CRDs, not in those schemas) are
  checked structurally: known fields only, required fields, enumerations, and their
  embedded pod template against the Kubernetes schema;
- the rendered overlay (tests/kustomize.py, cross-checked with `kubectl kustomize`
  when installed) keeps probes, limits, security context, replicas, placeholder-only
  secrets, and a grace period that covers the preStop pause, uvicorn's graceful
  shutdown and the pixel queue flush.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from bench import pods
from service import cli
from service.settings import VARIABLES, Settings, SettingsError, parse_duration
from tests.deploy.test_dockerfile import final_stage_user
from tests.kustomize import load_documents, pod_spec, render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAY = K8S / "overlays" / "example"
KUBERNETES_VERSIONS = ("1.33", "1.34", latest_version())
CRD_GROUPS = ("postgresql.cnpg.io/", "barmancloud.cnpg.io/")
PLACEHOLDER = "CHANGE-ME"
# Seconds between the end of uvicorn's graceful phase and SIGKILL that the lifespan
# shutdown (pixel queue flush, outbox worker, pool close) may use at least.
FLUSH_MARGIN_S = 5


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def all_resources() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in manifest_files() for doc in load_documents(path)]


def is_crd(resource: dict[str, Any]) -> bool:
    return resource["apiVersion"].startswith(CRD_GROUPS)


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render(OVERLAY)


def one(resources: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        r
        for r in resources
        if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def workloads(resources: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(r, spec) for r in resources if (spec := pod_spec(r)) is not None]


def pod_labels(resource: dict[str, Any]) -> dict[str, str]:
    if resource["kind"] == "CronJob":
        return resource["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return resource["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value = labels.get(expr["key"])
        if expr["operator"] == "In" and value not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and value in expr["values"]:
            return False
        if expr["operator"] == "Exists" and value is None:
            return False
    return True


def quantity(text: str | int) -> float:
    """CPU or memory quantity in base units (cores, bytes)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    assert match, f"bad quantity {text!r}"
    return float(match.group(1)) * units.get(match.group(2), 1)


# -- schema validation ------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_kubernetes_manifest_validates_strictly(version: str) -> None:
    checked = 0
    for path, resource in all_resources():
        if is_crd(resource):
            continue
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.relative_to(ROOT)} {resource['kind']}: {exc.message}")
        checked += 1
    assert checked >= 15


def test_strict_validation_rejects_an_unknown_field() -> None:
    """Proves the validator is strict, so the test above would catch a typo."""
    deployment = next(r for _, r in all_resources() if r["kind"] == "Deployment")
    deployment = yaml.safe_load(yaml.safe_dump(deployment))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.34", strict=True)


def test_the_rendered_overlay_validates_strictly(rendered: list[dict[str, Any]]) -> None:
    assert any(r["kind"] == "Deployment" for r in rendered)  # never vacuous
    for resource in rendered:
        if not is_crd(resource):
            kubernetes_validate.validate(resource, "1.34", strict=True)


@pytest.mark.slow
def test_the_renderer_matches_kubectl_kustomize(rendered: list[dict[str, Any]]) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the Python renderer alone is used")
    result = subprocess.run(
        [kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize failed: {result.stderr}")
    theirs = {(r["kind"], r["metadata"]["name"]): r for r in yaml.safe_load_all(result.stdout)}
    ours = {(r["kind"], r["metadata"]["name"]): r for r in rendered}
    assert ours == theirs


# CloudNativePG and Barman Cloud plugin resources: the fields of their API references
# (CloudNativePG 1.26+, plugin 0.5+) that a manifest may use; an unknown one is a typo.
CRD_FIELDS: dict[str, dict[str, set[str]]] = {
    "Cluster": {
        "spec": {
            "description", "inheritedMetadata", "imageName", "imageCatalogRef",
            "imagePullPolicy", "schedulerName", "postgresUID", "postgresGID", "instances",
            "minSyncReplicas", "maxSyncReplicas", "postgresql", "replicationSlots",
            "bootstrap", "replica", "superuserSecret", "enableSuperuserAccess",
            "certificates", "imagePullSecrets", "storage", "serviceAccountTemplate",
            "walStorage", "ephemeralVolumeSource", "startDelay", "stopDelay",
            "smartShutdownTimeout", "switchoverDelay", "failoverDelay",
            "livenessProbeTimeout", "affinity", "topologySpreadConstraints", "resources",
            "ephemeralVolumesSizeLimit", "priorityClassName", "primaryUpdateStrategy",
            "primaryUpdateMethod", "backup", "nodeMaintenanceWindow", "monitoring",
            "externalClusters", "logLevel", "projectedVolumeTemplate", "env", "envFrom",
            "managed", "seccompProfile", "tablespaces", "enablePDB", "plugins", "probes",
        },
        "spec.postgresql": {
            "parameters", "synchronous", "pg_hba", "pg_ident", "syncReplicaElectionConstraint",
            "shared_preload_libraries", "ldap", "promotionTimeout", "enableAlterSystem",
            "extensions",
        },
        "spec.postgresql.synchronous": {
            "method", "number", "maxStandbyNamesFromCluster", "standbyNamesPre",
            "standbyNamesPost", "dataDurability", "failoverQuorum",
        },
        "spec.bootstrap.initdb": {
            "database", "owner", "secret", "options", "dataChecksums", "encoding",
            "localeCollate", "localeCType", "locale", "localeProvider", "icuLocale",
            "icuRules", "builtinLocale", "walSegmentSize", "postInitSQL",
            "postInitApplicationSQL", "postInitTemplateSQL", "import",
            "postInitApplicationSQLRefs", "postInitTemplateSQLRefs", "postInitSQLRefs",
        },
        "spec.affinity": {
            "enablePodAntiAffinity", "topologyKey", "nodeSelector", "nodeAffinity",
            "tolerations", "podAntiAffinityType", "additionalPodAntiAffinity",
            "additionalPodAffinity",
        },
        "spec.storage": {"storageClass", "size", "resizeInUseVolumes", "pvcTemplate"},
        "spec.walStorage": {"storageClass", "size", "resizeInUseVolumes", "pvcTemplate"},
    },
    "Pooler": {
        "spec": {
            "cluster", "type", "instances", "template", "pgbouncer", "monitoring",
            "serviceTemplate", "deploymentStrategy",
        },
        "spec.pgbouncer": {"poolMode", "authQuerySecret", "authQuery", "parameters", "pg_hba", "paused"},
    },
    "ObjectStore": {
        "spec": {"configuration", "retentionPolicy", "instanceSidecarConfiguration"},
        "spec.configuration": {
            "destinationPath", "endpointURL", "endpointCA", "s3Credentials",
            "azureCredentials", "googleCredentials", "serverName", "wal", "data", "tags",
            "historyTags",
        },
    },
    "ScheduledBackup": {
        "spec": {
            "suspend", "immediate", "schedule", "cluster", "backupOwnerReference", "target",
            "method", "pluginConfiguration", "online", "onlineConfiguration",
        },
    },
}  # fmt: skip


def _at(resource: dict[str, Any], dotted: str) -> Any:
    value: Any = resource
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


@pytest.mark.parametrize(
    "path,resource",
    [(p, r) for p, r in all_resources() if is_crd(r)],
    ids=lambda v: v.name if isinstance(v, Path) else v["kind"],
)
def test_cloudnativepg_resources_are_structurally_valid(
    path: Path, resource: dict[str, Any]
) -> None:
    kind = resource["kind"]
    expected_api = "barmancloud.cnpg.io/v1" if kind == "ObjectStore" else "postgresql.cnpg.io/v1"
    assert resource["apiVersion"] == expected_api
    assert kind in CRD_FIELDS, f"no structural check for {kind}"
    assert set(resource) <= {"apiVersion", "kind", "metadata", "spec"}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", resource["metadata"]["name"])
    for dotted, allowed in CRD_FIELDS[kind].items():
        section = _at(resource, dotted)
        if section is not None:
            unknown = set(section) - allowed
            assert not unknown, f"{path.name}: unknown fields in {dotted}: {sorted(unknown)}"
    spec = resource["spec"]
    if kind == "Cluster":
        assert isinstance(spec["instances"], int) and spec["instances"] >= 1
        assert spec["storage"]["size"]
        assert all(isinstance(v, str) for v in spec["postgresql"]["parameters"].values())
        assert spec["postgresql"]["synchronous"]["method"] in ("any", "first")
    elif kind == "Pooler":
        assert spec["type"] in ("rw", "ro", "r")
        assert spec["pgbouncer"]["poolMode"] in ("session", "transaction")
        assert all(isinstance(v, str) for v in spec["pgbouncer"]["parameters"].values())
        # The embedded pod template is a Kubernetes type: validate it as one.
        kubernetes_validate.validate(
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "pooler"},
                "template": spec["template"],
            },
            "1.34",
            strict=True,
        )
    elif kind == "ObjectStore":
        assert urlsplit(spec["configuration"]["destinationPath"]).scheme in ("s3", "gs", "https")
        assert re.fullmatch(r"\d+[dwm]", spec["retentionPolicy"])
    elif kind == "ScheduledBackup":
        assert len(spec["schedule"].split()) == 6, "CloudNativePG schedules have a seconds field"
        assert spec["method"] in ("plugin", "barmanObjectStore", "volumeSnapshot")


# -- the service's pods ------------------------------------------------------------


def test_every_pod_runs_unprivileged_with_a_read_only_root(rendered) -> None:
    docker_uid = int(final_stage_user().split(":")[0])
    for resource, spec in workloads(rendered):
        where = f"{resource['kind']} {resource['metadata']['name']}"
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["runAsUser"] == docker_uid, f"{where}: runAsUser differs from the image USER"
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        tmp_volumes = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert not sc["capabilities"].get("add"), where
            assert not sc.get("privileged"), where
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert mounts.get("/tmp") in tmp_volumes, f"{where}: /tmp must be an emptyDir"


def test_every_container_has_requests_and_limits(rendered) -> None:
    for resource, spec in workloads(rendered):
        for container in spec["containers"]:
            resources = container["resources"]
            for kind in ("cpu", "memory"):
                request = quantity(resources["requests"][kind])
                limit = quantity(resources["limits"][kind])
                assert 0 < request <= limit, f"{resource['metadata']['name']} {kind}"


def test_every_container_runs_the_released_image_not_latest(rendered) -> None:
    for resource, spec in workloads(rendered):
        for container in spec["containers"]:
            assert not container["image"].endswith(":latest"), resource["metadata"]["name"]
            assert ":" in container["image"], resource["metadata"]["name"]


def test_deployment_runs_at_least_two_replicas_spread_over_nodes(rendered) -> None:
    deployment = one(rendered, "Deployment", "newsletter")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    labels = pod_labels(deployment)
    assert selects(deployment["spec"]["selector"], labels)
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    by_node = [c for c in spread if c["topologyKey"] == "kubernetes.io/hostname"]
    assert by_node and by_node[0]["whenUnsatisfiable"] == "DoNotSchedule"
    assert selects(by_node[0]["labelSelector"], labels)

    hpa = one(rendered, "HorizontalPodAutoscaler", "newsletter")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "newsletter"
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    pdb = one(rendered, "PodDisruptionBudget", "newsletter")
    assert selects(pdb["spec"]["selector"], labels)
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"]["minAvailable"] < 2


def test_deployment_probes_readyz_healthz_and_startup(rendered) -> None:
    deployment = one(rendered, "Deployment", "newsletter")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port_names == {"http": 8000}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in port_names
    # A failover must not empty the endpoints at once (the pixel needs no database).
    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] >= 20
    assert container["livenessProbe"]["httpGet"]["path"] != "/readyz"


def _configmap_env(rendered) -> dict[str, str]:
    return one(rendered, "ConfigMap", "newsletter")["data"]


def test_grace_period_covers_prestop_graceful_shutdown_and_pixel_flush(rendered) -> None:
    deployment = one(rendered, "Deployment", "newsletter")
    spec = deployment["spec"]["template"]["spec"]
    command = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    pixel_wait = parse_duration(_configmap_env(rendered).get("PIXEL_WAIT_MAX", "2s"))
    assert Settings().pixel_wait_max == 2.0  # the default the ConfigMap may rely on
    # Endpoint removal must reach the ingress controller before SIGTERM.
    assert pre_stop >= max(5, pixel_wait)
    needed = pre_stop + cli.GRACEFUL_SHUTDOWN_S + pixel_wait + FLUSH_MARGIN_S
    assert spec["terminationGracePeriodSeconds"] >= needed


def test_prometheus_scrapes_by_annotation_and_no_servicemonitor(rendered) -> None:
    deployment = one(rendered, "Deployment", "newsletter")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == 8000
    assert not [r for r in rendered if r["kind"] in ("ServiceMonitor", "PodMonitor")]


def test_service_selects_the_server_pods(rendered) -> None:
    service = one(rendered, "Service", "newsletter")
    labels = pod_labels(one(rendered, "Deployment", "newsletter"))
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_configmap_holds_only_known_valid_settings(rendered) -> None:
    data = _configmap_env(rendered)
    known = {name for name, _field, _parse in VARIABLES}
    assert set(data) <= known, f"unknown settings: {sorted(set(data) - known)}"
    assert not {"SECRET_KEYS", "ADMIN_TOKENS", "SMTP_URL", "DATABASE_URL"} & set(data)
    settings = Settings.from_env(data, required=())
    assert settings.db_statement_cache_size == 0, "PgBouncer transaction mode needs 0"
    assert "*" not in settings.forwarded_allow_ips
    for entry in settings.forwarded_allow_ips.split(","):
        assert ipaddress.ip_network(entry.strip(), strict=False).is_private


def test_server_uses_the_pooler_and_jobs_use_the_primary_directly(rendered) -> None:
    cluster = one(rendered, "Cluster")
    pooler = one(rendered, "Pooler")
    assert pooler["spec"]["cluster"]["name"] == cluster["metadata"]["name"]
    assert pooler["spec"]["type"] == "rw"
    assert pooler["spec"]["pgbouncer"]["poolMode"] == "transaction"
    app_secret = f"{cluster['metadata']['name']}-app"  # written by CloudNativePG

    container = one(rendered, "Deployment", "newsletter")["spec"]["template"]["spec"]["containers"][
        0
    ]
    assert container["args"][:2] == ["newsletter", "serve"]
    assert "--no-migrate" in container["args"], "migrations need a direct connection"
    env = {e["name"]: e for e in container["env"]}
    url = urlsplit(env["DATABASE_URL"]["value"])
    assert url.hostname == pooler["metadata"]["name"]
    assert url.username == "$(DB_USER)" and url.password == "$(DB_PASSWORD)"
    for name in ("DB_USER", "DB_PASSWORD"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == app_secret
    names = [e["name"] for e in container["env"]]
    assert names.index("DATABASE_URL") > max(names.index("DB_USER"), names.index("DB_PASSWORD"))

    for kind, command in (("Job", "migrate"), ("CronJob", "purge")):
        resource = one(rendered, kind)
        job_container = pod_spec(resource)["containers"][0]
        assert job_container["args"] == ["newsletter", command]
        job_env = {e["name"]: e for e in job_container["env"]}
        ref = job_env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (app_secret, "uri")  # the -rw service
    cron = one(rendered, "CronJob")["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"


def test_secrets_hold_placeholders_only(rendered) -> None:
    secrets = [r for _, r in all_resources() if r["kind"] == "Secret"]
    assert secrets
    for secret in secrets:
        values = dict(secret.get("stringData", {}))
        for key, value in secret.get("data", {}).items():
            values[key] = base64.b64decode(value).decode()
        assert values, secret["metadata"]["name"]
        for key, value in values.items():
            assert PLACEHOLDER in value, f"{secret['metadata']['name']}.{key} is not a placeholder"


def test_the_example_secret_cannot_be_deployed_as_it_is(rendered) -> None:
    env = dict(_configmap_env(rendered))
    env.update(one(rendered, "Secret", "newsletter")["stringData"])
    env["DATABASE_URL"] = "postgresql://u:p@db/newsletter"
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    problems = " ".join(caught.value.problems)
    assert "SECRET_KEYS" in problems and "ADMIN_TOKENS" in problems


def test_no_credentials_in_plain_env_values() -> None:
    for path, resource in all_resources():
        if resource["kind"] == "Secret" or is_crd(resource):
            continue
        spec = pod_spec(resource)
        for container in spec["containers"] if spec else []:
            for entry in container.get("env", []):
                value = entry.get("value", "")
                parts = urlsplit(value) if "://" in value else None
                if parts and parts.password:
                    assert parts.password.startswith("$("), f"{path.name}: {entry['name']}"


def test_ingress_routes_every_public_path_and_hides_operations(rendered) -> None:
    from service.app import routes

    service = one(rendered, "Service", "newsletter")
    prefixes = []
    for ingress in (r for r in rendered if r["kind"] == "Ingress"):
        for path in ingress_paths(ingress):
            assert path["pathType"] == "Prefix"
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
            prefixes.append(path["path"])

    def routed(path: str) -> bool:
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)

    internal = {"/healthz", "/readyz", "/metrics"}
    for path in internal:
        assert not routed(path), f"{path} must not be reachable from outside"
    app_paths = {route.path for route in routes(Settings())}  # type: ignore[attr-defined]
    assert internal <= app_paths
    unrouted = sorted(p for p in app_paths - internal if not routed(p))
    assert not unrouted, f"routes without an Ingress path: {unrouted}"


def ingress_paths(ingress: dict[str, Any]) -> list[dict[str, Any]]:
    return [path for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]


# Paths whose URL carries a token from an email (or, for /admin, an address): an access
# log line there ties an IP and a user agent to a person, outside the erasure's reach.
UNLOGGED = ("/o", "/unsubscribe", "/confirm", "/cancel", "/tracking", "/manage", "/admin")


def test_no_ingress_logs_a_path_that_names_a_person(rendered) -> None:
    ingresses = [r for r in rendered if r["kind"] == "Ingress"]
    found: dict[str, dict[str, Any]] = {}
    for ingress in ingresses:
        for path in ingress_paths(ingress):
            found[path["path"]] = ingress
    for prefix in UNLOGGED:
        ingress = found.get(prefix)
        assert ingress is not None, f"{prefix} is not routed"
        annotations = ingress["metadata"].get("annotations", {})
        assert annotations.get("nginx.ingress.kubernetes.io/enable-access-log") == "false", (
            f"{prefix} is routed by {ingress['metadata']['name']}, which logs its requests"
        )


def test_admin_has_an_ingress_of_its_own_limited_to_the_operators_networks(rendered) -> None:
    import ipaddress

    admin = [
        r
        for r in rendered
        if r["kind"] == "Ingress" and any(p["path"] == "/admin" for p in ingress_paths(r))
    ]
    assert len(admin) == 1
    assert [p["path"] for p in ingress_paths(admin[0])] == ["/admin"]
    ranges = admin[0]["metadata"]["annotations"][
        "nginx.ingress.kubernetes.io/whitelist-source-range"
    ]
    networks = [ipaddress.ip_network(part.strip()) for part in ranges.split(",")]
    assert networks and all(not n.is_unspecified and n.prefixlen > 0 for n in networks)


def test_postgres_logs_no_statement_parameters_but_still_slow_statements(rendered) -> None:
    """Statement parameters are addresses, names, IPs: a slow or failing sign-up would
    copy them into PostgreSQL's log, which no erasure reaches."""
    parameters = one(rendered, "Cluster")["spec"]["postgresql"]["parameters"]
    assert parameters["log_parameter_max_length"] == "0"
    assert parameters["log_parameter_max_length_on_error"] == "0"
    assert parse_duration_ms(parameters["log_min_duration_statement"]) > 0


def test_postgres_logs_no_values_from_errors_nor_whole_statements(rendered) -> None:
    """A unique violation's DETAIL quotes the address (`Key (lower(email))=(…) already
    exists`), a COPY error's CONTEXT an import's line: `terse` leaves both out. Statement
    logging other than the slow-statement line (whose parameters are cut to nothing)
    stays off."""
    parameters = one(rendered, "Cluster")["spec"]["postgresql"]["parameters"]
    assert parameters["log_error_verbosity"] == "terse"
    assert parameters["log_statement"] == "none"
    assert parameters["log_min_duration_sample"] == "-1"
    assert float(parameters["log_transaction_sample_rate"]) == 0
    preload = parameters.get("shared_preload_libraries", "")
    assert "auto_explain" not in preload and "pgaudit" not in preload


def parse_duration_ms(text: str) -> float:
    units = {"ms": 1, "s": 1000, "min": 60000}
    for unit, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def test_backups_are_encrypted_at_rest_in_the_object_store(rendered) -> None:
    configuration = one(rendered, "ObjectStore")["spec"]["configuration"]
    assert configuration["wal"]["encryption"] in ("AES256", "aws:kms")
    assert configuration["data"]["encryption"] in ("AES256", "aws:kms")


def test_network_policies_admit_only_ingress_prometheus_and_needed_egress(rendered) -> None:
    policies = [r for r in rendered if r["kind"] == "NetworkPolicy"]
    for resource, _spec in workloads(rendered):
        labels = pod_labels(resource)
        covering = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        assert covering, f"{resource['metadata']['name']} has no NetworkPolicy"
        for policy in covering:
            assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}

    server = one(rendered, "NetworkPolicy", "newsletter-server")["spec"]
    peers = [peer for rule in server["ingress"] for peer in rule["from"]]
    namespaces = {
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in peers
    }
    assert namespaces == {"ingress-nginx", "monitoring"}
    assert all("ipBlock" not in p for p in peers)
    egress_ports = {
        (port["port"], port.get("protocol", "TCP"))
        for rule in server["egress"]
        for port in rule["ports"]
    }
    assert egress_ports == {
        (5432, "TCP"), (587, "TCP"), (465, "TCP"), (25, "TCP"), (53, "UDP"), (53, "TCP")
    }  # fmt: skip
    assert all(rule.get("to") for rule in server["egress"]), "egress to anywhere"

    jobs = one(rendered, "NetworkPolicy", "newsletter-jobs")["spec"]
    assert not jobs.get("ingress")
    assert {p["port"] for rule in jobs["egress"] for p in rule["ports"]} == {5432, 53}


def test_postgres_cluster_has_failover_replicas_and_backups(rendered) -> None:
    cluster = one(rendered, "Cluster")["spec"]
    assert cluster["instances"] >= 3
    assert cluster["affinity"]["podAntiAffinityType"] == "required"
    assert cluster["postgresql"]["synchronous"]["number"] >= 1
    store = one(rendered, "ObjectStore")
    (plugin,) = cluster["plugins"]
    assert plugin["isWALArchiver"] is True
    assert plugin["parameters"]["barmanObjectName"] == store["metadata"]["name"]
    credentials = store["spec"]["configuration"]["s3Credentials"]
    for ref in credentials.values():
        secret = one(rendered, "Secret", ref["name"])
        assert ref["key"] in secret["stringData"]
    assert PLACEHOLDER in store["spec"]["configuration"]["destinationPath"]
    backup = one(rendered, "ScheduledBackup")["spec"]
    assert backup["cluster"]["name"] == one(rendered, "Cluster")["metadata"]["name"]
    assert backup["pluginConfiguration"]["name"] == plugin["name"]
    # Enough PostgreSQL connections for PgBouncer's server pool plus the Jobs and the
    # operator's own.
    pool = int(one(rendered, "Pooler")["spec"]["pgbouncer"]["parameters"]["default_pool_size"])
    max_connections = int(cluster["postgresql"]["parameters"]["max_connections"])
    instances = one(rendered, "Pooler")["spec"]["instances"]
    assert pool * instances + 20 <= max_connections


def test_pooler_accepts_every_replica_at_full_pool(rendered) -> None:
    hpa = one(rendered, "HorizontalPodAutoscaler", "newsletter")["spec"]
    settings = Settings.from_env(_configmap_env(rendered), required=())
    pooler = one(rendered, "Pooler")["spec"]
    max_client = int(pooler["pgbouncer"]["parameters"]["max_client_conn"])
    # Each PgBouncer instance must take every client connection when the other is down.
    assert hpa["maxReplicas"] * settings.db_pool_max <= max_client


def test_namespace_enforces_the_restricted_pod_security_standard(rendered) -> None:
    namespace = one(rendered, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for resource in rendered:
        if resource["kind"] != "Namespace":
            assert resource["metadata"].get("namespace") == namespace["metadata"]["name"]


def test_sending_runs_in_its_own_worker_deployment_with_its_own_hpa(rendered) -> None:
    server = one(rendered, "Deployment", "newsletter")
    worker = one(rendered, "Deployment", "newsletter-worker")
    server_args = server["spec"]["template"]["spec"]["containers"][0]["args"]
    worker_container = worker["spec"]["template"]["spec"]["containers"][0]
    assert "--no-worker" in server_args  # the pixel never shares a process with a send
    assert worker_container["args"][:2] == ["newsletter", "worker"]
    port = worker_container["ports"][0]
    assert worker_container["args"][-2:] == ["--port", str(port["containerPort"])]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert worker_container[probe]["httpGet"]["port"] == port["name"]
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    labels = pod_labels(worker)
    assert selects(worker["spec"]["selector"], labels)
    assert not selects(server["spec"]["selector"], labels)  # the Service never routes to it
    assert not selects(
        {"matchLabels": one(rendered, "Service", "newsletter")["spec"]["selector"]}, labels
    )
    hpa = one(rendered, "HorizontalPodAutoscaler", "newsletter-worker")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "newsletter-worker"
    [policy] = [
        p
        for p in rendered
        if p["kind"] == "NetworkPolicy" and selects(p["spec"]["podSelector"], labels)
    ]
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {5432, 25, 587, 465, 53} <= egress_ports


def test_the_worker_runs_two_replicas_on_two_nodes_with_a_disruption_budget(rendered) -> None:
    """A person waiting for a confirmation email should not wait for a node to be
    replaced: two workers on different nodes, and a drain takes one at a time."""
    worker = one(rendered, "Deployment", "newsletter-worker")
    assert worker["spec"]["replicas"] >= 2
    labels = pod_labels(worker)
    spread = worker["spec"]["template"]["spec"]["topologySpreadConstraints"]
    by_node = [c for c in spread if c["topologyKey"] == "kubernetes.io/hostname"]
    assert by_node and by_node[0]["whenUnsatisfiable"] == "DoNotSchedule"
    assert selects(by_node[0]["labelSelector"], labels)
    hpa = one(rendered, "HorizontalPodAutoscaler", "newsletter-worker")
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    [pdb] = [
        p
        for p in rendered
        if p["kind"] == "PodDisruptionBudget" and selects(p["spec"]["selector"], labels)
    ]
    spec = pdb["spec"]
    assert spec.get("maxUnavailable") == 1 or spec.get("minAvailable") == 1
    server = one(rendered, "Deployment", "newsletter")
    assert not selects(spec["selector"], pod_labels(server))


def test_the_overlay_gives_every_ingress_its_own_host(rendered) -> None:
    """Each Ingress of the base carries the placeholder host; an overlay that patched some
    of them would leave a path (webhooks, links, the admin) on a host nobody owns."""
    base_host = "news.example.com"
    ingresses = [r for r in rendered if r["kind"] == "Ingress"]
    assert len(ingresses) >= 4
    for ingress in ingresses:
        hosts = [rule["host"] for rule in ingress["spec"]["rules"]]
        hosts += [h for tls in ingress["spec"].get("tls", []) for h in tls["hosts"]]
        assert base_host not in hosts, ingress["metadata"]["name"]


def test_the_pixel_under_send_bench_models_the_deployed_cpu_resources(rendered) -> None:
    """bench/bench_pixel_under_send.py gives its processes the CPU of k8s/base's
    Deployments (bench/pods.py); an overlay patching them would make it measure other
    pods than those deployed. Under contention CPU goes by requests, and the worker's
    stays a tenth of the web's or less so that the pixel wins it (docs/deploying/capacity.md,
    "Sending")."""
    modelled = pods.deployed_pods()
    for name, deployment in (("web", "newsletter"), ("worker", "newsletter-worker")):
        [container] = one(rendered, "Deployment", deployment)["spec"]["template"]["spec"][
            "containers"
        ]
        cpu = {kind: container["resources"][kind]["cpu"] for kind in ("requests", "limits")}
        deployed = pods.PodCPU(pods.millicores(cpu["requests"]), pods.millicores(cpu["limits"]))
        assert modelled[name] == deployed, name
    assert modelled["worker"].request_m * 10 <= modelled["web"].request_m


def test_the_bench_converts_cpu_resources_as_the_kubelet_does() -> None:
    """Kubernetes' pkg/kubelet/cm/helpers_linux.go (MilliCPUToShares, MilliCPUToQuota)
    and its cgroup v2 conversion of shares to cpu.weight (1 + (shares - 2) x 9999 / 262142)."""
    assert [pods.millicores(q) for q in ("25m", "1", "1.5", 2)] == [25, 1000, 1500, 2000]
    assert [pods.shares(m) for m in (1, 25, 250, 1000)] == [2, 25, 256, 1024]
    assert [pods.weight(s) for s in (2, 1024, 262144)] == [1, 39, 10000]
    assert [pods.quota_us(m) for m in (5, 250, 1000)] == [1000, 25000, 100000]
