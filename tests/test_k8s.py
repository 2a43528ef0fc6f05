"""The Kubernetes manifests (deploy/k8s/), checked offline.

Each overlay is rendered with ``kubectl kustomize`` (where kubectl is installed; else those
checks skip) and every rendered object is validated against the Kubernetes JSON schemas of the
pinned ``kubernetes-validate`` (strict: an unknown or misplaced field fails), for the oldest
Kubernetes the manifests need (1.30: native sidecars on by default) and the newest the package
knows. The ServiceMonitor is a CRD, not in those schemas: its fields are checked here by hand.
The API container sets the same settings as docker-compose.yml's api where both set one, every
setting name is a real one, every `remi` command and flag the manifests run exists, and the pod
is shaped as docs/operations.md says (probes, drain, limits, non-root, read-only root file
system with the writable paths the service and the sync write).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("faiss-disk", "milvus")
KUBECTL = shutil.which("kubectl")
# 1.30: the oldest release with native sidecars (initContainers[].restartPolicy: Always) on by default
K8S_VERSIONS = ("1.30.0", "1.37.0")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed (it renders the overlays)")


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    assert KUBECTL is not None
    out = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def objects(overlay: str, kind: str) -> list[dict[str, Any]]:
    return [doc for doc in render(overlay) if doc["kind"] == kind]


def one(overlay: str, kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in objects(overlay, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{overlay}: {kind}/{name} x {len(found)}"
    return found[0]


def config_map(overlay: str, prefix: str) -> dict[str, str]:
    """A generated ConfigMap's data (kustomize adds a content hash to its name)."""
    found = [d for d in objects(overlay, "ConfigMap") if re.fullmatch(rf"{prefix}(-[a-z0-9]+)?", d["metadata"]["name"])]
    assert len(found) == 1
    return dict(found[0]["data"])


def pod_spec(overlay: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(overlay, "Deployment", "remi-api")["spec"]["template"]["spec"]
    return spec


def container(spec: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    found = [c for c in spec["initContainers" if init else "containers"] if c["name"] == name]
    assert len(found) == 1
    return found[0]


def flag(c: dict[str, Any], name: str) -> str:
    """The value a container's command line gives ``name``."""
    argv = [*c.get("command", []), *c.get("args", [])]
    return str(argv[argv.index(name) + 1])


def container_env(overlay: str, c: dict[str, Any]) -> dict[str, str | None]:
    """A container's variables: literal values, None for the ones read from a Secret."""
    env: dict[str, str | None] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_map(overlay, source["configMapRef"]["name"].rsplit("-", 1)[0]))
    for var in c.get("env", []):
        env[var["name"]] = var.get("value")
    return env


def compose_api_env() -> dict[str, str]:
    """The api service's environment in docker-compose.yml (anchors merged; unset names left out)."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    env = compose["services"]["api"]["environment"]
    return {name: str(value) for name, value in env.items() if value is not None}


@needs_kubectl
@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_passes_the_kubernetes_schemas(overlay: str, version: str) -> None:
    import kubernetes_validate

    kinds = set()
    for doc in render(overlay):
        kinds.add(doc["kind"])
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD of the Prometheus Operator: not in the Kubernetes schemas (checked below)
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']} against {version}: {exc.message}")
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "CronJob"} <= kinds
    assert {"ServiceMonitor", "ConfigMap", "ServiceAccount", "PersistentVolumeClaim"} <= kinds


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_service_monitor_scrapes_the_api_service_with_a_metrics_key(overlay: str) -> None:
    monitor = one(overlay, "ServiceMonitor", "remi-api")
    service = one(overlay, "Service", "remi-api")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    labels = monitor["spec"]["selector"]["matchLabels"]
    assert labels.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]} and endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["type"] == "Bearer" and endpoint["authorization"]["credentials"]["key"]
    settings = config_map(overlay, "remi-api-settings")
    assert settings["REMI_METRICS_PUBLIC"] == "false" and settings["REMI_AUTH_REQUIRED"] == "true"
    assert set(service["spec"]["selector"].items()) <= set(
        one(overlay, "Deployment", "remi-api")["spec"]["template"]["metadata"]["labels"].items()
    )


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_api_sets_what_docker_compose_sets_with_the_same_values(overlay: str) -> None:
    api = container_env(overlay, container(pod_spec(overlay), "api"))
    compose = compose_api_env()
    assert set(compose) <= set(api), f"set in docker-compose.yml, not in {overlay}: {sorted(set(compose) - set(api))}"
    different = {
        name: (compose[name], api[name]) for name in compose if api[name] is not None and api[name] != compose[name]
    }
    assert different == {}, f"docker-compose.yml vs {overlay} (compose, k8s): {different}"
    assert api["REMI_REDIS_URL"] is None  # from the Secret remi-redis, never a literal in a manifest
    assert api["REMI_WAIT_FOR_INDEX"] == "true"  # replicas never build


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_setting_the_manifests_set_is_a_real_setting(overlay: str) -> None:
    from index.params import IndexSettings
    from service.config import ServiceSettings

    known = {f"REMI_{name.upper()}" for name in ServiceSettings.model_fields}
    known |= {f"REMI_INDEX_{name.upper()}" for name in IndexSettings.model_fields}
    known.add("REMI_INDEX_REMOTE")  # not a setting: the URL the sidecar and the job pass as --from / --publish
    spec = pod_spec(overlay)
    job = one(overlay, "CronJob", "remi-reindex")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    for c in [*spec["containers"], *spec["initContainers"], *job["containers"]]:
        names = {name for name in container_env(overlay, c) if name.startswith("REMI_")}
        assert names <= known, f"{overlay}: {c['name']} sets unknown settings {sorted(names - known)}"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_api_pod_probes_drains_is_limited_and_runs_non_root_on_a_read_only_root(overlay: str) -> None:
    spec = pod_spec(overlay)
    api = container(spec, "api")
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert int(api["lifecycle"]["preStop"]["exec"]["command"][1]) < spec["terminationGracePeriodSeconds"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
    sidecars = spec.get("initContainers", [])  # the sync sidecar (faiss-disk), none with a shared root (milvus)
    job = one(overlay, "CronJob", "remi-reindex")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert job["securityContext"]["runAsNonRoot"] is True
    volumes = {v["name"]: v for v in [*spec["volumes"], *job["volumes"]]}
    for c in (api, *sidecars, *job["containers"]):
        assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
        writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
        # what the processes write: the index root (versions, `current`, the sync's lock, the API's
        # blocklist.json) and /tmp (the metrics folder of several workers); emptyDirs (the shared root
        # of the milvus overlay: its claim), nothing else
        assert {"/data/index", "/tmp"} <= writable, c["name"]
        for m in c["volumeMounts"]:
            if not m.get("readOnly"):
                assert {"emptyDir", "persistentVolumeClaim"} & set(volumes[m["name"]]), (c["name"], m["name"])
    settings = config_map(overlay, "remi-api-settings")
    assert flag(api, "--index-root") == "/data/index"
    assert settings["REMI_API_KEYS_FILE"].startswith(
        next(m["mountPath"] for m in api["volumeMounts"] if m["name"] == "api-keys") + "/"
    )
    for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler"):
        assert objects(overlay, kind), kind
    hpa = one(overlay, "HorizontalPodAutoscaler", "remi-api")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "remi-api" and hpa["spec"]["minReplicas"] >= 2


@needs_kubectl
@pytest.mark.parametrize("overlay", ["faiss-disk"])
def test_the_sidecar_syncs_into_the_root_the_api_serves_from_where_the_cronjob_publishes(overlay: str) -> None:
    spec = pod_spec(overlay)
    sync = container(spec, "index-sync", init=True)
    assert sync["restartPolicy"] == "Always"  # a native sidecar: up before the API, down after it
    argv = [*sync["command"], *sync["args"]]
    assert argv[:3] == ["remi", "index", "sync"]
    assert flag(sync, "--root") == flag(container(spec, "api"), "--index-root")
    assert argv[argv.index("--from") + 1] == "$(REMI_INDEX_REMOTE)"
    index_volume = {m["mountPath"]: m["name"] for m in sync["volumeMounts"]}["/data/index"]
    assert {m["mountPath"]: m["name"] for m in container(spec, "api")["volumeMounts"]}["/data/index"] == index_volume
    cron = one(overlay, "CronJob", "remi-reindex")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (job,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert job["args"][job["args"].index("--publish") + 1] == "$(REMI_INDEX_REMOTE)"
    remote = config_map(overlay, "remi-object-store")["REMI_INDEX_REMOTE"]
    assert container_env(overlay, job)["REMI_INDEX_REMOTE"] == container_env(overlay, sync)["REMI_INDEX_REMOTE"]
    assert re.match(r"^(s3|gs|az)://", remote)


@needs_kubectl
def test_the_overlays_choose_the_backend() -> None:
    assert "REMI_BACKEND" not in config_map("faiss-disk", "remi-api-settings")  # the default: FAISS
    assert config_map("faiss-disk", "remi-api-settings")["REMI_MMAP"] == "true"
    milvus = container_env("milvus", container(pod_spec("milvus"), "api"))
    assert milvus["REMI_BACKEND"] == "milvus" and "REMI_MILVUS_URI" in milvus and milvus["REMI_MILVUS_URI"] is None
    job_spec = one("milvus", "CronJob", "remi-reindex")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (job,) = job_spec["containers"]
    assert container_env("milvus", job)["REMI_BACKEND"] == "milvus"
    # a Milvus version is published by its alias flip, not uploaded (`--publish` is FAISS only): the
    # job and the replicas share one root on a ReadWriteMany claim, and there is no sync sidecar
    assert "--publish" not in job["args"] and not pod_spec("milvus").get("initContainers")
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in job_spec["volumes"]}
    api_claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod_spec("milvus")["volumes"]}
    assert claims["index"] == api_claims["index"] == "remi-index"
    assert one("milvus", "PersistentVolumeClaim", "remi-index")["spec"]["accessModes"] == ["ReadWriteMany"]


def containers_in(node: Any) -> list[dict[str, Any]]:
    """Every container spec (a mapping with an ``image``) anywhere in a manifest."""
    if isinstance(node, dict):
        found = [node] if "image" in node else []
        return found + [c for value in node.values() for c in containers_in(value)]
    if isinstance(node, list):
        return [c for item in node for c in containers_in(item)]
    return []


def manifest_commands() -> list[list[str]]:
    """Every `remi` command line of the base as the images run it (the jobs image's ENTRYPOINT is remi)."""
    commands = []
    for path in (K8S / "base").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            for c in containers_in(doc):
                argv = [*c.get("command", []), *c.get("args", [])]
                commands.append(argv[1:] if argv[:1] == ["remi"] else argv)
    return commands


def test_every_remi_command_and_flag_in_the_manifests_exists() -> None:
    from cli import app

    commands = manifest_commands()
    assert {tuple(c[:1]) for c in commands} >= {("serve",), ("index",), ("reindex",)}
    runner = CliRunner()
    for argv in commands:
        words = [w for w in argv if not w.startswith("-") and not w.startswith("$") and not w.startswith("/")][:2]
        words = words[:2] if words[0] == "index" else words[:1]
        result = runner.invoke(app, [*words, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (words, result.output)
        for option in (w for w in argv if w.startswith("--")):
            assert re.search(rf"{re.escape(option)}\b", result.output), f"remi {' '.join(words)} has no {option}"
        for required in required_options(words):  # a required flag is never left to a variable
            assert required & set(argv), f"remi {' '.join(words)} needs {sorted(required)}: {argv}"


def required_options(words: list[str]) -> list[set[str]]:
    """The option names of each required parameter of ``remi <words>``."""
    import typer

    from cli import app

    command: Any = typer.main.get_command(app)
    ctx = command.context_class(command)  # typer's own click, whichever it is
    for word in words:
        command = command.get_command(ctx, word)
    return [set(p.opts) for p in command.params if p.required and p.param_type_name == "option"]


READ_ONLY_POD = """
set -e
mount --bind "$INDEX" "$INDEX"  # the pod's emptyDirs: the only writable mounts
mount --bind "$TMPDIR" "$TMPDIR"
mount -o remount,bind,ro /
if touch "$REPO/.read-only-probe" 2>/dev/null; then echo "root file system writable"; exit 3; fi
cd "$REPO"
eval "exec $SYNC_CMD" > "$TMPDIR/sync.log" 2>&1 &
eval "exec $SERVE_CMD" > "$TMPDIR/serve.log" 2>&1 &
trap 'kill %1 %2; wait' EXIT
for _ in $(seq 1 150); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$REMI_PORT/readyz")" = 200 ] && break; sleep 0.2
done
curl -sf -X POST "http://127.0.0.1:$REMI_PORT/recommend" -H "authorization: Bearer $KEY" \
  -H 'content-type: application/json' -d '{"user_id": "u1", "history": ["item-001", "item-002"], "k": 3}'
curl -sf "http://127.0.0.1:$REMI_PORT/metrics" -H "authorization: Bearer $KEY" > /dev/null
"""


def base_settings() -> dict[str, str]:
    """The literals of the base's remi-api-settings (kustomize's configMapGenerator), without kubectl."""
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    (generator,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "remi-api-settings"]
    return dict(item.split("=", 1) for item in generator["literals"])


@pytest.mark.skipif(
    shutil.which("unshare") is None or shutil.which("curl") is None or os.geteuid() != 0,
    reason="needs root, unshare and curl (a private mount namespace with a read-only root file system)",
)
def test_the_api_and_the_sync_run_on_a_read_only_root_with_only_the_pods_writable_mounts(tmp_path: Path) -> None:
    """What the pod spec promises, on this machine: the manifest's own command lines and settings
    (paths moved under tmp_path), `/` read-only, only the index root and the temp folder writable
    (the emptyDirs; TMPDIR stands for /tmp), 2 workers on Redis (the blocklist's disk copy), the
    sync filling the root: ready, answering with a key, metrics, no write refused."""
    import shlex
    import uuid

    import redis

    from index.publish import reindex
    from index.sync import publish
    from loadtest.server import free_port
    from remi.contract import read_current
    from tests.service.tiny_model import write_tiny_artifacts

    remote, index, tmp = (tmp_path / "remote").as_uri(), tmp_path / "index", tmp_path / "tmp"
    version = reindex(write_tiny_artifacts(tmp_path / "art").artifacts, tmp_path / "job", kind="flat").index_version
    publish(remote, tmp_path / "job", version)
    index.mkdir()
    tmp.mkdir()
    spec = yaml.safe_load((K8S / "base" / "api-deployment.yaml").read_text())["spec"]["template"]["spec"]

    def command_line(c: dict[str, Any]) -> str:
        argv = [a.replace("/data/index", str(index)).replace("$(REMI_INDEX_REMOTE)", remote) for a in c["args"]]
        assert c["command"][0] == "remi"
        return shlex.join([sys.executable, "-m", "cli", *c["command"][1:], *argv])

    settings = base_settings()
    keys = tmp_path / "auth" / Path(settings["REMI_API_KEYS_FILE"]).name  # the Secret volume's file
    added = subprocess.run(
        [sys.executable, "-m", "cli", "auth", "add-key", "--keys-file", str(keys), "--scopes", "recommend,metrics"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    prefix = f"remi-test:{uuid.uuid4().hex[:12]}:"
    env = {
        **os.environ, **settings, "REMI_API_KEYS_FILE": str(keys), "REMI_HOST": "127.0.0.1",
        "REMI_PORT": str(free_port()), "REMI_WORKERS": "2", "REMI_POLL_SECONDS": "0.3",
        "REMI_REDIS_URL": "redis://127.0.0.1:6379/0", "REMI_REDIS_PREFIX": prefix,
        "REPO": str(REPO), "INDEX": str(index), "TMPDIR": str(tmp), "PYTHONDONTWRITEBYTECODE": "1",
        "KEY": added.stdout.split()[0], "SERVE_CMD": command_line(container(spec, "api")),
        "SYNC_CMD": command_line(container(spec, "index-sync", init=True)),
    }  # fmt: skip
    try:
        done = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "bash", "-c", READ_ONLY_POD],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        stale = list(client.scan_iter(match=f"{prefix}*"))
        if stale:
            client.delete(*stale)
        client.close()
    logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in tmp.glob("*.log"))
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{logs}"
    assert '"items"' in done.stdout and read_current(index) == version
    assert (index / "blocklist.json").is_file()  # the API wrote its disk copy into the root
    assert not re.search(r"Read-only file system|Errno 30|Permission denied", logs), logs
