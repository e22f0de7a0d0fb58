"""RagIndex: chunk documents, embed them and upsert them into pgvector."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from crucible.api.base import ApiModel, api_config, cel, defaulted
from crucible.api.common import (
    MAX_NAME,
    MAX_URI,
    MODEL_URI_HELP,
    PvcPath,
    Resources,
    RunStatus,
    SecretKeyRef,
    stays_inside,
)
from crucible.api.formats import (
    GIT_URL,
    MODEL_URI,
    OBJECT_NAME,
    SQL_TABLE,
    GitUrl,
    ModelUri,
    ObjectName,
    SqlTable,
)


class GitSource(ApiModel):
    """A git repository checked out by the workload."""

    url: GitUrl = GIT_URL.field(
        description="Clone URL, e.g. https://github.com/org/docs.git.",
        min_length=1,
        max_length=MAX_URI,
    )
    revision: str = Field(
        default="HEAD", description="Branch, tag or commit to index.", max_length=MAX_NAME
    )
    path: str = Field(
        default="",
        description="Sub-directory holding the documents; empty means the root.",
        max_length=MAX_URI,
        json_schema_extra={
            "x-kubernetes-validations": [stays_inside("git.path must stay inside the repository")]
        },
    )


class ConfigMapDocuments(ApiModel):
    """Every key of a ConfigMap is one document."""

    name: ObjectName = OBJECT_NAME.about("the name of a ConfigMap").field(
        description="Name of the ConfigMap.",
        min_length=1,
        max_length=MAX_NAME,
    )


EXACTLY_ONE_DOCUMENT_SOURCE = cel(
    "[has(self.git), has(self.configMap), has(self.pvc)].filter(x, x).size() == 1",
    "set exactly one of git ({url, revision, path}), configMap ({name}) or pvc ({claimName, path})",
    reason="FieldValueInvalid",
)


class DocumentSource(ApiModel):
    """Where the documents are: exactly one of git, configMap or pvc."""

    model_config = api_config(EXACTLY_ONE_DOCUMENT_SOURCE)

    git: GitSource | None = Field(default=None, description="A git repository.")
    config_map: ConfigMapDocuments | None = Field(
        default=None, description="A ConfigMap whose keys are documents."
    )
    pvc: PvcPath | None = Field(default=None, description="A folder on a PersistentVolumeClaim.")
    include: list[str] = Field(
        default_factory=lambda: ["**/*.md", "**/*.mdx", "**/*.txt"],
        json_schema_extra={
            "default": ["**/*.md", "**/*.mdx", "**/*.txt"],
            "x-kubernetes-validations": [
                cel(
                    "size(self) > 0",
                    "include: no pattern, so no file would be read: list the files' "
                    "patterns (e.g. **/*.md), or leave include out for Markdown and text",
                    reason="FieldValueInvalid",
                )
            ],
        },
        max_length=64,
        description="Glob patterns of the files to index; at least one (an empty list would "
        "match nothing, and is refused).",
    )


class Chunking(ApiModel):
    """How documents are split before embedding."""

    model_config = api_config(
        cel(
            "self.chunkOverlap < self.chunkSize",
            "chunking.chunkOverlap must be smaller than chunking.chunkSize, e.g. 30 and 300",
            field_path=".chunkOverlap",
            reason="FieldValueInvalid",
        )
    )

    chunk_size: int = Field(
        default=300,
        ge=16,
        le=8192,
        description="Tokens per chunk. A RagIndex counts them in the embedding model's own "
        "tokenizer, capped at its maximum input; a SyntheticDataset in spec.tokenizer's.",
    )
    chunk_overlap: int = Field(
        default=30, ge=0, le=8191, description="Tokens shared by consecutive chunks."
    )
    split_markdown_headers: bool = Field(
        default=True, description="Split markdown at headers first, then into token chunks."
    )


class Embedding(ApiModel):
    """The embedding model."""

    model: ModelUri = MODEL_URI.field(
        default="hf://BAAI/bge-base-en-v1.5",
        description=f"Embedding model: {MODEL_URI_HELP}.",
        max_length=MAX_URI,
    )
    batch_size: int = Field(default=32, ge=1, le=4096, description="Chunks embedded per batch.")


class Database(ApiModel):
    """The Postgres + pgvector database that holds the index."""

    connection_secret_ref: SecretKeyRef = Field(
        description="Secret key holding a postgresql:// connection URI."
    )
    table: SqlTable = SQL_TABLE.field(
        description="Table of the index (created if missing).",
        min_length=1,
        max_length=63,
    )


class RagIndexSpec(ApiModel):
    """Documents to index, how to chunk and embed them, and where to store the vectors."""

    source: DocumentSource = Field(description="Where the documents are.")
    chunking: Chunking = defaulted(
        Chunking(),
        description="How documents are split (default 300 tokens with 30 overlap).",
    )
    embedding: Embedding = defaulted(
        Embedding(),
        description="The embedding model (default bge-base-en-v1.5).",
    )
    database: Database = Field(description="The pgvector database and table.")
    resources: Resources = defaulted(
        Resources(gpus=0),
        description="Compute for the indexing Job (no GPU unless asked for).",
    )


class RagIndexStatus(RunStatus):
    """Observed state of a RagIndex."""

    documents: int | None = Field(default=None, ge=0, description="Documents indexed.")
    chunks: int | None = Field(default=None, ge=0, description="Chunks in the table.")
    table: str | None = Field(default=None, description="Table holding the index.")
    content_hash: str | None = Field(
        default=None, description="sha256 over the documents and chunking settings."
    )
    last_indexed_time: datetime | None = Field(
        default=None, description="When the index was last written."
    )
