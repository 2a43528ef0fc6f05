"""The service's one config object: environment variables with the prefix ``REMI_``.

``remi serve`` builds one :class:`ServiceSettings` from its flags and the environment, then hands
it to the server processes as the REMI_* variables of :meth:`ServiceSettings.to_env`, so a
container, a test and the CLI configure the service the same way and every uvicorn worker
process reads identical settings.

Secrets can come from files instead of the environment: every setting is also read from a file
named after its variable (``remi_redis_password``, ``remi_redis_url``, ``remi_admin_token``...) in
REMI_SECRETS_DIR, or in ``/run/secrets`` when that folder exists (Docker and Compose secrets; a
Kubernetes Secret volume mounted anywhere with REMI_SECRETS_DIR pointing at it). One folder rather
than a ``*_FILE`` twin of each secret: every setting gets it without a second field, and the
file names are the variable names. A variable that is set wins over its file.
"""

from __future__ import annotations

import json
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

from remi.errors import RemiError

if TYPE_CHECKING:
    from service.redis_client import RedisAccess

DOCKER_SECRETS = Path("/run/secrets")


def secrets_folder(named: str | Path | None = None) -> Path | None:
    """``named`` (--secrets-dir) or REMI_SECRETS_DIR (it must be a folder), else /run/secrets when it
    is one, else none."""
    named = named or os.environ.get("REMI_SECRETS_DIR")
    if named:
        if not Path(named).is_dir():
            raise RemiError(f"REMI_SECRETS_DIR={named}: not a folder")
        return Path(named)
    return DOCKER_SECRETS if DOCKER_SECRETS.is_dir() else None


class ServiceSettings(BaseSettings):
    """Every setting of the online service, with its default."""

    model_config = SettingsConfigDict(env_prefix="REMI_", extra="ignore")

    # artifacts
    index_root: Path = Field(Path("index_root"), description="Index root with versions/ and the `current` pointer.")
    artifacts: Path | None = Field(
        None, description="Model artifacts; used to build the first index version when the root has none."
    )
    wait_for_index: bool = Field(
        False,
        description="Never build an index version: start on an empty (or missing) index root, answer 503 on /readyz "
        "until `remi index sync` (a replica's sidecar following a published index) or a reindex job flips `current`, "
        "then serve it; --artifacts is ignored. For replicas (deploy/k8s).",
    )
    poll_seconds: float = Field(2.0, ge=0, description="How often to check `current` for a new version; 0 = never.")
    mmap: bool = Field(
        False,
        description="Map each version's index, item arrays and ONNX weights from its files, one copy in the page "
        "cache for all workers (off: a private copy per worker). On, a file truncated in place kills the workers "
        "(SIGBUS): only where nothing but the reindex job can write the index root.",
    )
    backend: Literal["faiss", "milvus"] = Field(
        "faiss",
        description="Where the items are searched: each version's FAISS index in every worker's memory (faiss), or "
        "the Milvus collection that REMI_MILVUS_ALIAS names (milvus; the model still loads from its version folder).",
    )
    milvus_uri: str | None = Field(
        None,
        description="The Milvus of --backend milvus: http(s)://host:19530 (a cluster), or a Milvus Lite .db file "
        "(one process: --workers 1, and no reindex job beside it).",
    )
    milvus_alias: str = Field(
        "remi", description="The Milvus alias that `remi reindex --backend milvus` flips and the service follows."
    )
    milvus_token: SecretStr | None = Field(
        None, description="Milvus credential (user:password or an API key); environment only."
    )
    milvus_token_file: Path | None = Field(
        None, description="A file holding the Milvus credential (instead of REMI_MILVUS_TOKEN), read at start."
    )
    milvus_timeout_s: float = Field(2.0, gt=0, description="Deadline of one Milvus call (a search, an alias lookup).")
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token with the `admin` scope (the /admin/* routes, and every other scope); unset with no "
        "other credential source = the /admin routes answer 404.",
    )

    # client authentication (service/auth.py; docs/operations.md "Threat model")
    auth_required: bool = Field(
        False,
        description="Every route but /healthz and /readyz needs a bearer credential with its scope (401 / 403); "
        "off = only /admin/* checks credentials (local use, `remi demo`).",
    )
    api_keys_file: Path | None = Field(
        None, description="API keys (hashes and scopes; `remi auth add-key`), re-read within a second of a change."
    )
    jwt_jwks_file: Path | None = Field(
        None, description="JWKS of the keys that sign accepted JWTs (scopes from `scope` / `scp`); re-read on change."
    )
    jwt_secret: SecretStr | None = Field(None, description="Shared secret of accepted HS256 JWTs (32+ characters).")
    jwt_audience: str | None = Field(None, description="Required `aud` of accepted JWTs; unset = not checked.")
    jwt_issuer: str | None = Field(None, description="Required `iss` of accepted JWTs; unset = not checked.")
    metrics_public: bool = Field(
        False, description="/metrics answers without credentials when auth is required (else it needs `metrics`)."
    )
    docs_enabled: bool = Field(
        True, description="Serve /docs, /redoc and /openapi.json (behind credentials when auth is required)."
    )
    blocklist_poll_ms: float = Field(
        200.0,
        gt=0,
        description="How often each worker checks the blocklist's version in the store (a change applies within this).",
    )

    # history store
    redis_url: str | None = Field(
        None, description="Redis URL of the history store; unset = embedded in-process store."
    )
    redis_prefix: str = Field("remi:", description="Key namespace in Redis.")
    redis_timeout_ms: float = Field(
        100.0, gt=0, description="Redis socket and connect timeout (then the request falls back)."
    )
    redis_max_connections: int = Field(64, ge=1, description="Redis connection pool size per worker.")
    redis_username: str | None = Field(
        None, description="Redis ACL user (server, cluster nodes, a sentinel's master); a user in the URL wins."
    )
    redis_password: SecretStr | None = Field(
        None, description="Redis password for that user (or `requirepass`); a password in the URL wins."
    )
    redis_sentinel_username: str | None = Field(
        None, description="ACL user of the sentinels themselves (redis+sentinel URLs); `?sentinel_username=` wins."
    )
    redis_sentinel_password: SecretStr | None = Field(
        None, description="Password of the sentinels themselves; `?sentinel_password=` in the URL wins."
    )
    redis_tls_ca_file: Path | None = Field(
        None, description="CA bundle that signs the Redis certificates (rediss URLs); unset = the system's CAs."
    )
    redis_tls_cert_file: Path | None = Field(
        None, description="Client certificate for Redis mutual TLS (with REMI_REDIS_TLS_KEY_FILE)."
    )
    redis_tls_key_file: Path | None = Field(None, description="Private key of REMI_REDIS_TLS_CERT_FILE.")
    redis_tls_verify: Literal["full", "ca", "none"] = Field(
        "full",
        description="How Redis certificates are checked: full (chain and host name), ca (chain only: nodes "
        "announced by an address their certificate does not name), none (encrypted, not authenticated).",
    )
    secrets_dir: Path | None = Field(
        None,
        description="Folder of secret files named after the variables (remi_redis_password, remi_redis_url, ...), "
        "read at start; a set variable wins. Unset: /run/secrets when it exists.",
    )
    redis_breaker_window_s: float = Field(
        10.0, gt=0, description="Rolling window in which the circuit breaker counts Redis calls and failures."
    )
    redis_breaker_min_failures: int = Field(
        5, ge=1, description="Failures in the window before the breaker may open (one late reply never opens it)."
    )
    redis_breaker_failure_rate: float = Field(
        0.5, gt=0, le=1, description="Share of the window's calls that must fail for the breaker to open."
    )
    redis_breaker_open_s: float = Field(
        1.0, ge=0, description="How long an open breaker fails calls fast before one call probes Redis."
    )
    idempotency_ttl_s: int = Field(
        86400, ge=1, description="How long an Idempotency-Key of POST /users/{id}/events is remembered."
    )
    history_max_len: int = Field(200, ge=1, description="Events kept per user (older ones are trimmed).")
    history_ttl_days: float | None = Field(30.0, gt=0, description="Expiry of an idle user's history in Redis.")
    seed_history: str | None = Field(
        None, description="CSV user_id,item_id,timestamp loaded into the embedded store at start (demo)."
    )

    # requests
    k_max: int = Field(500, ge=1, description="Largest k a request may ask for.")
    batch_max: int = Field(256, ge=1, description="Most users in one POST /recommend/batch.")
    events_max: int = Field(1000, ge=1, description="Most events in one POST /users/{id}/events.")
    filter_attributes_max: int = Field(16, ge=1, description="Most attributes one request filter may name.")
    filter_values_max: int = Field(
        1000, ge=1, description="Most values in one `in` / `not_in` list of a request filter."
    )
    exclude_items_max: int = Field(1000, ge=1, description="Most item ids in one request's exclude_items.")
    history_items_max: int = Field(
        1000,
        ge=1,
        description="Most item ids in one request's history (a longer list is a 422; the model reads the most "
        "recent REMI_HISTORY_MAX_LEN).",
    )
    event_max_future_s: int = Field(
        86400,
        ge=0,
        description="How far ahead of the server's clock an event's timestamp may be, in seconds (further is a 422).",
    )
    filter_exact_max_rows: int = Field(
        20_000,
        ge=0,
        description="A filter allowing at most this many items (or 2% of the catalogue) is searched exactly over "
        "them, a wider one by the index with a selector (benchmarks/results/filtered_search.md).",
    )
    filter_graph_slot_cost: float = Field(
        240.0,
        ge=0,
        description="The filter planner's cost of one HNSW beam slot (at M = 16) in exact row scores: above the "
        "row threshold a filter is searched on the graph when its widened walk is cheaper than scoring the allowed "
        "rows exactly (retrieval/filtered.py). Measured on the 2-core reference machine; calibrate with "
        "benchmarks/filtered_search.py. 0 = the graph whenever the widened beam fits its cap.",
    )
    filter_cache_mb: float = Field(
        256.0,
        ge=0,
        description="Memory per worker for repeated filters: each distinct filter's allowed-item mask and, when it "
        "allows under 25% of the items, their embedding rows copied out once (retrieval/filter_cache.py); least "
        "recently used filters are dropped beyond it. 0 = build every request's mask anew.",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1, description="Largest request body in bytes; larger ones get 413 (also when chunked)."
    )
    bulk_body_bytes_per_s: float = Field(
        1_048_576,
        ge=0,
        description="Per-worker budget for large request bodies (over REMI_BULK_BODY_MIN_BYTES), in bytes a second, "
        "holding max(REMI_MAX_BODY_BYTES, 2 x this): a body it cannot pay gets 503 with Retry-After: 1 before it is "
        "read (chunked: as it arrives). 1 MiB/s keeps decoding such bodies to a few % of a worker "
        "(service/bulk_budget.py); 0 = off.",
    )
    bulk_body_min_bytes: int = Field(
        65_536, ge=0, description="Bodies up to this many bytes (all normal requests) never draw on the bulk budget."
    )

    # compute
    onnx_threads: int = Field(1, ge=1, description="onnxruntime intra-op threads per worker.")
    faiss_threads: int = Field(1, ge=1, description="FAISS OpenMP threads per worker.")
    compute_threads: int = Field(2, ge=1, description="Threads running model + search off the event loop.")
    microbatch: bool = Field(True, description="Coalesce concurrent requests into one model + index call.")
    fast_path: bool = Field(
        True,
        description=(
            "Answer plain POST /recommend requests without the framework's per-request layers "
            "(anything unusual still takes the full app: same answers, same errors)."
        ),
    )
    microbatch_wait_ms: float = Field(
        1.0, ge=0, description="Longest a request waits for others on their way to join its batch."
    )
    microbatch_max: int = Field(64, ge=1, description="Most requests coalesced into one batch.")
    interest_dedup_cosine: float = Field(
        0.94,
        gt=0,
        le=1,
        description=(
            "Search once per group of a user's interests whose cosine reaches this (score merge); 1 = off. "
            "0.94 keeps 0.987 of the all-interest top-50 (benchmarks/results/serving_dedup.md)."
        ),
    )
    interest_min_weight: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Skip interests whose routing weight is below this (score merge; never the heaviest); 0 = off.",
    )

    # server (used by `remi serve`)
    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8000, ge=0, le=65535, description="Port.")
    workers: int = Field(1, ge=1, description="uvicorn worker processes.")
    log_level: str = Field("info", description="Log level.")

    # connections (used by `remi serve`; service/transport.py, docs/operations.md "Hostile clients")
    request_head_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A request's line and headers must arrive within this, counted from the connection's start or "
        "the request's first byte; else 408 and the connection is closed (slow heads, sockets that send nothing).",
    )
    keep_alive_timeout_s: float = Field(
        5.0, gt=0, description="An idle keep-alive connection is closed after this long without a new request."
    )
    request_body_timeout_s: float = Field(
        20.0, gt=0, description="A request's body must arrive within this after its head; else 408 and close."
    )
    max_connections: int = Field(
        10_000,
        ge=1,
        description="Open client connections per worker; more are answered 503 and closed at once. Never more than "
        "the open-file limit less --fd-headroom.",
    )
    fd_headroom: int = Field(
        256,
        ge=0,
        description="File descriptors per worker kept from client connections for its own files (index versions, "
        "model, Redis pool, metrics); the open-file soft limit is first raised to the hard one.",
    )
    max_head_bytes: int = Field(
        16_384, ge=1024, description="Largest request line + headers in bytes; larger ones get 431 (414 for the line)."
    )
    max_headers: int = Field(100, ge=1, description="Most header lines in one request; more get 431.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then the secret files of :func:`secrets_folder`."""
        given = init_settings.init_kwargs.get("secrets_dir") if isinstance(init_settings, InitSettingsSource) else None
        folder = secrets_folder(given)
        files = () if folder is None else (SecretsSettingsSource(settings_cls, secrets_dir=folder),)
        return (init_settings, env_settings, dotenv_settings, *files)

    def to_env(self) -> dict[str, str]:
        """The REMI_* variables from which ``ServiceSettings()`` rebuilds exactly these settings.

        Generated from the fields, so a new setting reaches the worker processes without a line
        here. A field that is None has no variable (see :meth:`export_env`); a None that is not
        the default cannot be written as one and raises ValueError.
        """
        prefix = self.model_config.get("env_prefix", "")
        values = self.model_dump(mode="json")
        env = {}
        for name, value in values.items():
            secret = getattr(self, name)
            if isinstance(secret, SecretStr):  # model_dump masks it
                value = secret.get_secret_value()
            if value is None:
                if type(self).model_fields[name].default is not None:
                    raise ValueError(f"{name}=None has no REMI_* form (its variable unset means the default)")
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = value
            elif isinstance(value, int | float):
                text = repr(value)
            else:
                text = json.dumps(value)
            env[f"{prefix}{name}".upper()] = text
        return env

    def export_env(self, environ: MutableMapping[str, str]) -> None:
        """Makes ``environ`` describe these settings: sets every variable, removes those of None fields.

        The one way ``remi serve`` hands its settings to the server processes (the in-process
        uvicorn factory and the SO_REUSEPORT workers, which read ``ServiceSettings()``).
        """
        env = self.to_env()
        prefix = self.model_config.get("env_prefix", "")
        for name in type(self).model_fields:
            var = f"{prefix}{name}".upper()
            if var not in env:
                environ.pop(var, None)
        environ.update(env)

    @property
    def history_ttl_seconds(self) -> int | None:
        """The Redis expiry of a history, shared by the service and `remi history load`."""
        return int(self.history_ttl_days * 86400) if self.history_ttl_days else None

    @model_validator(mode="after")
    def _required_auth_has_a_credential_source(self) -> ServiceSettings:
        sources = (self.api_keys_file, self.jwt_jwks_file, self.jwt_secret, self.admin_token)
        if self.auth_required and all(s is None for s in sources):
            raise ValueError(
                "REMI_AUTH_REQUIRED=true needs a credential source: REMI_API_KEYS_FILE, REMI_JWT_JWKS_FILE, "
                "REMI_JWT_SECRET or REMI_ADMIN_TOKEN"
            )
        if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value()) < 32:
            raise ValueError(
                "REMI_JWT_SECRET must have at least 32 characters (HS256 with a short secret is guessable)"
            )
        return self

    @model_validator(mode="after")
    def _milvus_backend_has_a_milvus(self) -> ServiceSettings:
        if self.backend == "milvus" and not self.milvus_uri:
            raise ValueError("REMI_BACKEND=milvus needs REMI_MILVUS_URI (http://host:19530, or a Milvus Lite .db file)")
        if self.backend == "milvus" and str(self.milvus_uri).endswith(".db") and self.workers > 1:
            raise ValueError("a Milvus Lite .db file serves one process: use --workers 1 or a Milvus server URI")
        return self

    @model_validator(mode="after")
    def _redis_tls_settings_need_a_tls_url(self) -> ServiceSettings:
        tls = (self.redis_tls_ca_file, self.redis_tls_cert_file, self.redis_tls_key_file)
        if self.redis_url and (any(tls) or self.redis_tls_verify != "full"):
            if not self.redis_url.partition("://")[0].startswith("rediss"):
                raise ValueError(
                    "REMI_REDIS_TLS_* need a TLS URL in REMI_REDIS_URL: rediss://, rediss+cluster:// or "
                    "rediss+sentinel://"
                )
        if (self.redis_tls_cert_file is None) != (self.redis_tls_key_file is None):
            raise ValueError("REMI_REDIS_TLS_CERT_FILE and REMI_REDIS_TLS_KEY_FILE go together")
        return self

    def redis_access(self) -> RedisAccess:
        """The credentials and TLS files every Redis client of the service and `remi history load` uses."""
        from service.redis_client import RedisAccess

        def secret(value: SecretStr | None) -> str | None:
            return None if value is None else value.get_secret_value()

        def path(value: Path | None) -> str | None:
            return None if value is None else str(value)

        return RedisAccess(
            username=self.redis_username,
            password=secret(self.redis_password),
            sentinel_username=self.redis_sentinel_username,
            sentinel_password=secret(self.redis_sentinel_password),
            tls_ca_file=path(self.redis_tls_ca_file),
            tls_cert_file=path(self.redis_tls_cert_file),
            tls_key_file=path(self.redis_tls_key_file),
            tls_verify=self.redis_tls_verify,
        )

    def milvus_credential(self) -> str | None:
        """The Milvus token: REMI_MILVUS_TOKEN, else REMI_MILVUS_TOKEN_FILE's content (stripped), else none."""
        if self.milvus_token is not None:
            return self.milvus_token.get_secret_value()
        if self.milvus_token_file is not None:
            return self.milvus_token_file.read_text().strip() or None
        return None

    @model_validator(mode="after")
    def _embedded_store_is_per_process(self) -> ServiceSettings:
        if self.workers > 1 and not self.redis_url:
            raise ValueError("the embedded history store lives in one process: use --workers 1 or set REMI_REDIS_URL")
        return self
