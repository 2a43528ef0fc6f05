"""Which backend the reindex job publishes to, and where Milvus is: the REMI_* settings it shares with the service.

``REMI_BACKEND``, ``REMI_MILVUS_URI``, ``REMI_MILVUS_ALIAS``, ``REMI_MILVUS_TOKEN`` (or
``REMI_MILVUS_TOKEN_FILE``) mean the same to ``remi reindex`` / ``remi index rollback|status`` as to
``remi serve`` (service/config.py), so one environment configures the job and the replicas. This
module imports no pymilvus (an extra): the FAISS job reads its settings too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from remi.errors import RemiError

if TYPE_CHECKING:
    from index.milvus_publish import MilvusTarget


class BackendSettings(BaseSettings):
    """Where a reindex job's versions go (flag > REMI_* > default)."""

    model_config = SettingsConfigDict(env_prefix="REMI_", extra="ignore")

    backend: Literal["faiss", "milvus"] = Field(
        "faiss",
        description="faiss: a FAISS index in each version folder, `current` flipped; milvus: a Milvus collection per "
        "version, the alias flipped (the version folder keeps the model).",
    )
    milvus_uri: str | None = Field(
        None, description="Milvus: http(s)://host:19530 of a cluster, or a Milvus Lite .db file."
    )
    milvus_alias: str = Field("remi", description="The alias the job flips and `remi serve --backend milvus` follows.")
    milvus_collection_prefix: str = Field(
        "remi_", description="Collections are named <prefix><version>; a prefix belongs to one index root."
    )
    milvus_token: SecretStr | None = Field(None, description="Milvus credential; environment only.")
    milvus_token_file: Path | None = Field(None, description="A file holding the Milvus credential.")
    milvus_timeout_s: float = Field(120.0, gt=0, description="Deadline of one Milvus call of the job (an insert).")

    def credential(self) -> str | None:
        if self.milvus_token is not None:
            return self.milvus_token.get_secret_value()
        if self.milvus_token_file is not None:
            return self.milvus_token_file.read_text().strip() or None
        return None

    def milvus_target(self) -> MilvusTarget:
        """A connected :class:`~index.milvus_publish.MilvusTarget` (``--backend milvus`` only)."""
        if not self.milvus_uri:
            raise RemiError("--backend milvus needs --milvus-uri (or REMI_MILVUS_URI)")
        try:
            from index.milvus_publish import MilvusTarget
            from retrieval.milvus import connect
        except ImportError as exc:
            raise RemiError(f"--backend milvus needs the milvus extra (remi-match[milvus]): {exc}") from exc
        try:
            client = connect(self.milvus_uri, self.credential(), self.milvus_timeout_s)
        except Exception as exc:  # pymilvus's own exceptions: one line naming the URI
            raise RemiError(f"cannot reach Milvus at {self.milvus_uri}: {str(exc).splitlines()[0][:300]}") from exc
        return MilvusTarget(client, self.milvus_alias, self.milvus_collection_prefix)
