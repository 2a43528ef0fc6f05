"""The deployment files, checked without a Docker engine.

``docker-compose.yml``, ``docker/api.Dockerfile`` and ``docker/jobs.Dockerfile`` are parsed and
checked for what the stack relies on (profiles, volumes, health checks, start order, no torch in
the API image, non-root users), ``docker-compose config`` validates the file where it is
installed, every ``remi`` sub-command and flag they use must exist in the CLI, and the compose
commands themselves run outside Docker, with ``/data`` a temporary folder and small sizes: init
trains and indexes a first model (and is a no-op the second time) and loads the training
histories into a real redis-server, the API image's command serves it (its health checks pass;
a training user is personalised from the start), train -> export -> reindex is picked up by the
running API without a restart, and the loadtest command measures it. ``docker/smoke.sh`` runs the
same stack in Docker.
"""

from __future__ import annotations

import ast
import gzip
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from loadtest.server import ServerProcess, free_port
from remi.contract import read_current

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
API_DOCKERFILE = REPO / "docker" / "api.Dockerfile"
JOBS_DOCKERFILE = REPO / "docker" / "jobs.Dockerfile"
BASE_IMAGE = "python:3.11-slim-bookworm"
COMPOSE_REDIS_URL = "redis://redis:6379/0"
TORCH_DEFAULTS = {"TORCH_SPEC": "torch==2.13.0", "TORCH_INDEX_URL": "https://download.pytorch.org/whl/cpu"}
UP_SERVICES = ("redis", "init", "api")  # what a plain `docker compose up` starts
PROFILED = ("train", "export", "reindex", "loadtest", "keys")
# tqdm is not here: `remi history load` (service/history_load.py) shows its progress with it, in the API image too
TRAIN_ONLY = ("torch", "training", "optuna", "matplotlib", "tabulate", "onnx", "onnxscript")
# small sizes for the compose commands run here (the compose defaults are the real ones)
SMALL = {
    "SYNTH_USERS": "300",
    "SYNTH_ITEMS": "200",
    "TRAIN_STEPS": "30",
    "LOADTEST_SECONDS": "2",
    "LOADTEST_CONCURRENCY": "4",
}


# ---------------------------------------------------------------------------- parsing helpers


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        name, _, args = (pending + text).partition(" ")
        pending = ""
        out.append((name.upper(), args.strip()))
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    """The instructions of the image's last stage (what ships), from its last FROM on."""
    steps = instructions(path)
    start = max(i for i, (name, _) in enumerate(steps) if name == "FROM")
    return steps[start:]


def arg_defaults(path: Path) -> dict[str, str | None]:
    """ARG name -> default (None when declared without one)."""
    found: dict[str, str | None] = {}
    for name, args in instructions(path):
        if name == "ARG":
            key, eq, value = args.partition("=")
            found[key] = value if eq else None
    return found


def exec_form(path: Path, name: str) -> list[str]:
    """The JSON (exec) form of the last CMD / ENTRYPOINT of a Dockerfile."""
    args = [a for n, a in instructions(path) if n == name]
    assert args, f"{path.name}: no {name}"
    value = args[-1]
    if name == "HEALTHCHECK":
        value = value[value.index("CMD ") + 4 :]
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), f"{name} must be in exec form"
    return parsed


def service_dockerfile(service: dict[str, Any]) -> Path | None:
    build = service.get("build")
    return REPO / build["dockerfile"] if isinstance(build, dict) else None


def service_argv(name: str, service: dict[str, Any], command: list[str] | None = None) -> list[str]:
    """What the container runs: the service's entrypoint/command over the image's ENTRYPOINT/CMD
    (``command``: the arguments of `docker compose run SERVICE ARGS...`, which replace the command)."""
    dockerfile = service_dockerfile(service)
    assert dockerfile is not None, f"{name}: not built from a Dockerfile here"
    entry = service.get("entrypoint")
    if entry is None:
        names = {n for n, _ in instructions(dockerfile)}
        entry = exec_form(dockerfile, "ENTRYPOINT") if "ENTRYPOINT" in names else []
    if command is None:
        command = service.get("command", exec_form(dockerfile, "CMD") if "entrypoint" not in service else [])
    assert isinstance(entry, list) and isinstance(command, list), f"{name}: use the list form"
    return [*entry, *command]


def remi_calls(argv: list[str]) -> list[list[str]]:
    """The `remi ...` invocations of a container command (a `sh -c` script is split by line)."""
    if argv[:1] == ["remi"]:
        return [argv]
    assert argv[0] == "sh" and argv[1].startswith("-") and "c" in argv[1], f"unexpected command {argv[:2]}"
    calls = []
    for line in argv[2].splitlines():
        for part in re.split(r"&&|\|\||;", line):
            tokens = shlex.split(part)
            while tokens and tokens[0] in ("then", "else", "do"):
                tokens.pop(0)
            if tokens[:1] == ["remi"]:
                calls.append(tokens)
    return calls


def all_remi_calls() -> list[tuple[str, list[str]]]:
    """(where, argv) of every `remi` call in docker-compose.yml and the images' CMD / ENTRYPOINT."""
    found = []
    for name, service in load_compose()["services"].items():
        if service_dockerfile(service) is not None:
            found += [(name, call) for call in remi_calls(service_argv(name, service))]
    found.append(("api.Dockerfile CMD", exec_form(API_DOCKERFILE, "CMD")))
    found.append(("jobs.Dockerfile ENTRYPOINT", exec_form(JOBS_DOCKERFILE, "ENTRYPOINT")))
    return found


def subcommand(call: list[str]) -> tuple[str, ...]:
    """`remi data synth --out x` -> ("data", "synth"): the words before the first flag."""
    words = []
    for token in call[1:]:
        if token.startswith("-"):
            break
        words.append(token)
    return tuple(words)


VAR = re.compile(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ${VAR:-default}, ${VAR}, $VAR, and $$ for a literal $."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1) or m.group(3)) or (m.group(2) or "")

    return VAR.sub(one, text)


def localize(text: str, data: Path, api_url: str = "", redis_url: str = "") -> str:
    """Container paths and addresses to this machine: /data -> a temporary folder, /app -> the
    repository, the compose api and redis -> the local ones."""
    text = re.sub(r"(?<![\w./-])/data(?=/|\s|$)", str(data), text)
    text = re.sub(r"(?<![\w./-])/app(?=/)", str(REPO), text)
    text = text.replace("http://api:8000", api_url) if api_url else text
    return text.replace(COMPOSE_REDIS_URL, redis_url) if redis_url else text


# ---------------------------------------------------------------------------- the files


def test_docker_compose_config_validates() -> None:
    """`docker-compose config -q` (Debian's, or the `docker compose` plugin) needs no daemon."""
    if shutil.which("docker-compose"):
        cmd = ["docker-compose"]
    elif (
        shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        cmd = ["docker", "compose"]
    else:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    proc = subprocess.run(
        [*cmd, "-f", str(COMPOSE), "config", "-q"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_compose_services_profiles_and_start_order() -> None:
    compose = load_compose()
    services = compose["services"]
    assert set(UP_SERVICES + PROFILED) <= set(services)
    for name in UP_SERVICES:
        assert "profiles" not in services[name], f"{name} must start with a plain `docker compose up`"
    for name in PROFILED:
        assert services[name].get("profiles") == [name]
    assert "remi-data" in compose["volumes"]

    redis = services["redis"]
    assert re.fullmatch(r"redis:7\.\d+\.\d+-alpine", redis["image"]), "pin Redis by its full tag"
    assert "redis-cli" in redis["healthcheck"]["test"] and "ping" in redis["healthcheck"]["test"]
    assert "--appendonly" in redis["command"] and "--save" in redis["command"]
    # in protected mode Redis answers the api's container DENIED (README.md#deployment): off whatever the image
    command = redis["command"]
    assert command[command.index("--protected-mode") + 1] == "no"
    assert "ports" not in redis, "Redis without protected mode must not be published"

    api = services["api"]
    assert service_dockerfile(api) == API_DOCKERFILE
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert api["environment"]["REMI_REDIS_URL"] == COMPOSE_REDIS_URL
    assert any(str(p).endswith(":8000") for p in api["ports"])
    assert {"cpus", "memory"} <= set(api["deploy"]["resources"]["limits"])
    assert any("/readyz" in part or "/healthz" in part for part in api["healthcheck"]["test"])

    for name in ("init", *PROFILED):
        assert service_dockerfile(services[name]) == JOBS_DOCKERFILE, name
    for name in ("api", "init", *PROFILED):
        assert "remi-data:/data" in services[name]["volumes"], name
    assert "./data:/input:ro" in services["train"]["volumes"]
    assert services["loadtest"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_compose_api_requires_credentials_and_listens_on_loopback_only() -> None:
    """A plain `up` must not publish an open API on every interface
    (docs/operations.md#threat-model-who-may-call-what): the port is bound to 127.0.0.1 unless
    REMI_BIND says otherwise, and every route but the probes needs a key
    from the keys file that the `keys` service writes (the same path in both)."""
    services = load_compose()["services"]
    api, keys = services["api"], services["keys"]
    env = api["environment"]
    assert env["REMI_AUTH_REQUIRED"] == "true" and env["REMI_METRICS_PUBLIC"] == "false"
    assert env["REMI_API_KEYS_FILE"] == keys["environment"]["REMI_API_KEYS_FILE"]
    assert env["REMI_API_KEYS_FILE"].startswith("/data/"), "on the volume both services mount"
    for port in api["ports"]:
        assert interpolate(str(port), {}) == "127.0.0.1:8000:8000", port
        assert interpolate(str(port), {"REMI_BIND": "0.0.0.0"}).startswith("0.0.0.0:")
    assert subcommand(["remi", *keys["command"]]) == ("auth", "list-keys")
    # the probes the health checks use answer without credentials
    assert any("/readyz" in part for part in api["healthcheck"]["test"])
    assert services["loadtest"]["environment"]["REMI_API_KEY"] == "${LOADTEST_API_KEY:-}"


def test_init_loads_the_training_histories_into_the_apis_redis() -> None:
    """init ends with `remi history load` of the training data into the Redis the api reads, with
    the api's history settings (key prefix, length, TTL), so the training users start personalised."""
    services = load_compose()["services"]
    init, api = services["init"], services["api"]
    assert init["depends_on"]["redis"]["condition"] == "service_healthy"
    loads = [c for c in remi_calls(service_argv("init", init)) if subcommand(c) == ("history", "load")]
    assert len(loads) == 1, "init must run `remi history load` once"
    call = loads[0]
    assert call[call.index("--redis-url") + 1] == api["environment"]["REMI_REDIS_URL"]
    # the same file `train` reads, so a stack trained on ./data loads ./data's histories
    assert (
        call[call.index("--data") + 1] == services["train"]["command"][services["train"]["command"].index("--data") + 1]
    )
    assert "./data:/input:ro" in init["volumes"]
    history_settings = {k for k in api["environment"] if k.startswith(("REMI_REDIS", "REMI_HISTORY"))}
    assert history_settings >= {"REMI_REDIS_URL", "REMI_REDIS_PREFIX", "REMI_HISTORY_MAX_LEN", "REMI_HISTORY_TTL_DAYS"}
    assert {k: init["environment"].get(k, "missing") for k in history_settings} == {
        k: api["environment"][k] for k in history_settings
    }
    script = service_argv("init", init)[2]
    assert script.index("remi reindex") < script.index("remi history load"), "load after the model is in place"


def test_api_image_has_no_training_stack() -> None:
    text = API_DOCKERFILE.read_text()
    steps = instructions(API_DOCKERFILE)
    assert "torch" not in text.lower()
    assert "optional-dependencies" not in text and "[train]" not in text and "[dev]" not in text
    assert steps[0] == ("FROM", BASE_IMAGE)
    copied = [args.split()[0] for name, args in steps if name == "COPY"]
    assert "training" not in copied, "the API image must not contain the training package"
    assert {"remi", "retrieval", "index", "service", "cli"} <= set(copied), "every package the API runs"
    runs = [args for name, args in steps if name == "RUN"]
    assert any("pip install --require-hashes -r requirements/service.txt" in r for r in runs), "install from the lock"
    assert ("COPY", "requirements/service.txt ./requirements/service.txt") in steps
    assert "pip install --no-deps ." in runs[-1], "the project without dependencies: they come from the lock"
    assert not [r for r in runs if "pip install" in r and "--require-hashes" not in r and "--no-deps" not in r]
    healthcheck = exec_form(API_DOCKERFILE, "HEALTHCHECK")
    assert healthcheck[0] == "python" and "/healthz" in healthcheck[-1]
    assert ("EXPOSE", "8000") in steps
    cmd = exec_form(API_DOCKERFILE, "CMD")
    assert cmd[:2] == ["remi", "serve"]
    for flag, value in {"--host": "0.0.0.0", "--port": "8000", "--index-root": "/data/index"}.items():
        assert cmd[cmd.index(flag) + 1] == value
    assert cmd[cmd.index("--artifacts") + 1] == "/data/artifacts"


def test_jobs_image_installs_cpu_torch_first() -> None:
    text = JOBS_DOCKERFILE.read_text()
    steps = instructions(JOBS_DOCKERFILE)
    assert steps[0] == ("FROM", f"{BASE_IMAGE} AS torch")
    final = final_stage(JOBS_DOCKERFILE)
    assert final[0] == ("FROM", BASE_IMAGE)
    runs = [args for name, args in final if name == "RUN"]
    torch_step = next(args for name, args in steps if name == "RUN" and "$TORCH_SPEC" in args)
    assert '--index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"' in torch_step
    assert final.index(("COPY", "--from=torch /opt/venv /opt/venv")) < final.index(
        ("COPY", "requirements/train.txt ./requirements/train.txt")
    )
    assert "pip install --require-hashes -r requirements/train.txt" in runs[1], "the lock, hash-checked"
    assert "pip install --no-deps ." in runs[-1]
    assert "COPY configs ./configs" in text and ("WORKDIR", "/app") in final
    assert exec_form(JOBS_DOCKERFILE, "ENTRYPOINT") == ["remi"]


def test_jobs_image_torch_source_is_a_build_argument_with_an_offline_wheel_folder() -> None:
    """A mirror or an air-gapped build (README.md#deployment): TORCH_SPEC / TORCH_INDEX_URL default to the
    PyTorch CPU index; TORCH_WHEEL_DIR installs from a folder of the build context with --no-index,
    in a first stage, so the wheel never stays in a layer of the shipped image."""
    defaults = arg_defaults(JOBS_DOCKERFILE)
    assert {k: defaults.get(k) for k in TORCH_DEFAULTS} == TORCH_DEFAULTS
    assert defaults.get("TORCH_WHEEL_DIR") == ""
    steps = instructions(JOBS_DOCKERFILE)
    torch_step = next(args for name, args in steps if name == "RUN" and "$TORCH_SPEC" in args)
    assert '--no-index --find-links /tmp/wheels "$TORCH_SPEC"' in torch_step
    assert '[ -n "$TORCH_WHEEL_DIR" ]' in torch_step
    assert "--no-deps" in torch_step, "torch's dependencies come from the hash-checked lock"
    assert ("COPY", "${TORCH_WHEEL_DIR:-docker/wheels}/ /tmp/wheels/") in steps
    assert not [a for n, a in final_stage(JOBS_DOCKERFILE) if n == "COPY" and "wheels" in a]
    # the default folder is in the repository (so the COPY works), its wheels are not
    assert (REPO / "docker" / "wheels").is_dir()
    ignored = subprocess.run(
        [
            "git",
            "check-ignore",
            "-q",
            "--no-index",
            "docker/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
        ],
        cwd=REPO,
    )
    assert ignored.returncode == 0, "wheels in docker/wheels must be gitignored"
    readme = (REPO / "README.md").read_text()
    for name in ("TORCH_SPEC", "TORCH_INDEX_URL", "TORCH_WHEEL_DIR"):
        assert name in readme, f"README: document the build argument {name}"


@pytest.mark.parametrize("dockerfile", [API_DOCKERFILE, JOBS_DOCKERFILE], ids=lambda p: p.name)
def test_images_run_as_non_root_and_install_deps_before_code(dockerfile: Path) -> None:
    steps = final_stage(dockerfile)
    users = [args for name, args in steps if name == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), "the last USER must not be root"
    copies = [args for name, args in steps if name == "COPY"]
    deps = next(i for i, c in enumerate(copies) if c.startswith("requirements/"))
    code = copies.index("remi ./remi")
    assert deps < code, "dependencies (the lock) before the code, for the layer cache"
    installs = [i for i, (name, args) in enumerate(steps) if name == "RUN" and "pip install" in args]
    assert installs[0] < steps.index(("COPY", "remi ./remi")) < installs[-1]


def test_dockerignore_keeps_the_context_small_but_not_what_the_images_copy() -> None:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip()[:1] not in ("", "#")]

    def ignored(path: str) -> bool:
        return any(fnmatch(path, p) or fnmatch(path, p.removeprefix("**/")) for p in patterns)

    kept_out = (".git", "runs", "demo", "tests", "benchmarks", "studies", "__pycache__", ".venv", "remi_match.egg-info")
    for path in kept_out:
        assert ignored(path), f"{path} should not be sent to the docker build"
    for dockerfile in (API_DOCKERFILE, JOBS_DOCKERFILE):
        for name, args in instructions(dockerfile):
            if name == "COPY" and not args.startswith("--from="):
                source = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", args.split()[0]).rstrip("/")  # ARG defaults
                assert (REPO / source).exists() and not ignored(source), f"{dockerfile.name} copies {source}"


def test_prometheus_scrapes_the_api_and_the_panels_use_real_metrics() -> None:
    config = yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "remi-api")
    assert job["scrape_interval"] == "15s" and job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"][0]["targets"] == ["api:8000"]
    defined = set(re.findall(r'"(remi_\w+)"', (REPO / "service" / "telemetry.py").read_text()))
    used = {
        re.sub(r"_(bucket|sum|count)$", "", m)
        for m in re.findall(r"remi_\w+", (REPO / "docker" / "grafana-panels.md").read_text())
    }
    assert used <= defined, f"undefined metrics in grafana-panels.md: {used - defined}"
    assert len(used & defined) >= 8


def test_pyproject_splits_service_and_training_dependencies() -> None:
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in reqs}

    base, extras = names(project["dependencies"]), project["optional-dependencies"]
    assert not base & set(TRAIN_ONLY), "the service's dependencies must not pull the training stack"
    assert "torch==2.13.0" in extras["train"]
    own = [r for r in extras["dev"] if r.startswith("remi-match[")]
    dev_extras = set(own[0].split("[", 1)[1].rstrip("]").split(",")) if own else set()
    assert dev_extras == set(extras) - {"dev"}, "`pip install -e .[dev]` installs everything (every other extra)"
    assert {"onnxruntime", "faiss-cpu", "fastapi", "redis", "typer"} <= base


def test_serve_path_never_imports_the_training_stack() -> None:
    """No module of remi/, retrieval/, index/, service/, loadtest/ imports torch or training (cli/: lazily)."""
    for package in ("remi", "retrieval", "index", "service", "loadtest"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    bad = [m for m in mods if m.split(".")[0] in TRAIN_ONLY]
                    assert not bad, f"{path.relative_to(REPO)} imports {bad}"
    code = (
        "import sys, cli, service.app, index.publish, retrieval.store, loadtest.client\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {TRAIN_ONLY!r})\n"
        "sys.exit(f'loaded: {bad}' if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


CALLS = all_remi_calls()


@pytest.mark.parametrize("words", sorted({subcommand(call) for _, call in CALLS}), ids=lambda w: " ".join(w) or "remi")
def test_every_remi_command_and_flag_exists(words: tuple[str, ...]) -> None:
    env = {**os.environ, "COLUMNS": "250", "TERMINAL_WIDTH": "250", "NO_COLOR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "cli", *words, "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    if words == ("loadtest",) and proc.returncode != 0 and "No such command" in proc.stderr:
        pytest.skip("`remi loadtest` is not in this CLI yet")
    assert proc.returncode == 0, f"remi {' '.join(words)}: {proc.stderr}"
    flags = {t.split("=")[0] for _, call in CALLS if subcommand(call) == words for t in call if t[:2] == "--"}
    for flag in sorted(flags):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", proc.stdout), f"remi {' '.join(words)}: no {flag}"


# ---------------------------------------------------------------------------- the commands, run


@dataclass
class Stack:
    """The compose services' commands running here: /data is `data`, the api a local process."""

    base: Path
    data: Path
    env: dict[str, str]
    services: dict[str, Any]
    redis_url: str
    url: str = ""
    api_key: str = ""  # made with the `keys` service: every scope but admin

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}

    def service_env(self, name: str, **env: str) -> dict[str, str]:
        """This env plus the service's `environment` (interpolated and localized; a name without a
        value passes the shell's, and there is none here)."""
        full_env = {**self.env, **env}
        for key, value in self.services[name].get("environment", {}).items():
            if value is not None:
                full_env[key] = localize(interpolate(str(value), full_env), self.data, self.url, self.redis_url)
        return full_env

    def run(
        self, name: str, timeout: float = 180, command: list[str] | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """Runs a jobs service's command, or ``command`` as `docker compose run` would (compose-interpolated
        with this env, paths localized)."""
        full_env = self.service_env(name, **env)
        argv = service_argv(name, self.services[name], command)
        argv = [localize(interpolate(a, full_env), self.data, self.url, self.redis_url) for a in argv]
        proc = subprocess.run(argv, cwd=self.base, env=full_env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{name}: {proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        return proc

    def current(self) -> str | None:
        return read_current(self.data / "index")


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The compose `redis` service's command, on a free port of this machine: a Redis of our own
    (never the shared one), as empty as the compose one after `up`."""
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    command = load_compose()["services"]["redis"]["command"]
    port = free_port()
    proc = subprocess.Popen(
        [*command, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() != b"PONG":
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, own_redis: str) -> Iterator[Stack]:
    """init's script, run for real on small synthetic data with its own Redis standing in for the
    compose one, then the API image's command serving it from that Redis."""
    base = tmp_path_factory.mktemp("deploy")
    data, bin_dir = base / "data", base / "bin"
    data.mkdir()
    bin_dir.mkdir()
    remi = bin_dir / "remi"  # the image's `remi` console script, for this interpreter
    remi.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cli "$@"\n')
    remi.chmod(0o755)
    compose_vars = {m.group(1) or m.group(3) for m in VAR.finditer(COMPOSE.read_text())} - {None}
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMI_") and k not in compose_vars}
    env |= SMALL | {"PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"}
    stack = Stack(base, data, env, load_compose()["services"], own_redis)
    stack.run("init")
    scopes = "recommend,events:write,history:read,metrics"
    stack.api_key = stack.run("keys", command=["auth", "add-key", "--scopes", scopes]).stdout.strip()

    # the api: the image's CMD with the compose environment (its Redis: ours)
    port = free_port()
    argv = [localize(a, data) for a in service_argv("api", stack.services["api"])]
    argv[argv.index("--host") + 1], argv[argv.index("--port") + 1] = "127.0.0.1", str(port)
    api_env = stack.service_env("api") | {"REMI_POLL_SECONDS": "0.2"}
    with ServerProcess(argv, port, base / "api.log", api_env, cwd=base) as api:
        stack.url = api.url
        api.start().wait_ready(timeout=90)
        yield stack


def test_init_trains_a_first_model_once(stack: Stack) -> None:
    assert (stack.data / "artifacts" / "manifest.json").is_file()
    current = stack.current()
    assert current is not None
    model = stack.data / "run" / "model.pt"
    mtime = model.stat().st_mtime_ns
    again = stack.run("init")  # a second `up`: no training, reindex is a no-op
    assert "not training" in again.stdout
    assert model.stat().st_mtime_ns == mtime and stack.current() == current


def test_training_users_are_personalised_from_the_start(stack: Stack) -> None:
    """Before init loaded the training histories, every training user got `cold_start` (README.md#deployment)."""
    with gzip.open(stack.data / "synth" / "interactions.csv.gz", "rt") as f:
        users = list(dict.fromkeys(line.split(",", 1)[0] for line in itertools.islice(f, 1, 2000)))[:5]
    for user in users:
        r = httpx.post(stack.url + "/recommend", json={"user_id": user, "k": 10}, headers=stack.auth, timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["fallback"] is None and body["history_len"] > 0, (user, body)


def test_api_command_serves_and_its_health_checks_pass(stack: Stack) -> None:
    manifest = json.loads((stack.data / "artifacts" / "manifest.json").read_text())
    history = (stack.data / "artifacts" / "item_ids.txt").read_text().split()[:5]
    body = {"user_id": "u-deploy", "k": 10, "history": history}
    assert httpx.post(stack.url + "/recommend", json=body, timeout=10).status_code == 401, "credentials required"
    r = httpx.post(stack.url + "/recommend", json=body, headers=stack.auth, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 10 and body["fallback"] is None
    assert body["model_version"] == manifest["model_version"] and body["index_version"] == stack.current()
    metrics = httpx.get(stack.url + "/metrics", headers=stack.auth, timeout=5).text
    assert any(
        line.startswith("remi_requests_total{") and 'route="/recommend"' in line and 'status="200"' in line
        for line in metrics.splitlines()
    )
    port = stack.url.rsplit(":", 1)[1]
    for probe in (exec_form(API_DOCKERFILE, "HEALTHCHECK"), stack.services["api"]["healthcheck"]["test"][1:]):
        argv = [a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in probe]
        argv[0] = sys.executable if argv[0] == "python" else argv[0]
        assert subprocess.run(argv, timeout=30).returncode == 0, probe


def test_train_export_reindex_are_picked_up_by_the_running_api(stack: Stack) -> None:
    before = stack.current()
    stack.run("train", TRAIN_STEPS="40")  # another model than init's (30 steps)
    stack.run("export")
    stack.run("reindex")
    after = stack.current()
    assert after is not None and after != before
    deadline = time.monotonic() + 30
    while httpx.get(stack.url + "/version", headers=stack.auth, timeout=5).json()["index_version"] != after:
        assert time.monotonic() < deadline, "the running api did not load the new `current`"
        time.sleep(0.2)


def test_loadtest_command_measures_the_api(stack: Stack) -> None:
    stack.run("loadtest", timeout=120, LOADTEST_API_KEY=stack.api_key)
    result = json.loads((stack.data / "loadtest.json").read_text())
    assert result["requests"] > 0 and result["errors"] == 0, result
