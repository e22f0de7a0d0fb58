"""Documents from a folder, a git checkout or a ConfigMap, split into markdown-aware chunks
whose length is counted in the consuming model's tokenizer (the embedding model of a RagIndex,
the tokenizer of a SyntheticDataset)."""

from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from crucible.api.contract import DocumentsInput
from crucible.api.ragindex import Chunking, GitSource
from crucible.workloads.common import WorkloadError, inside


class TokenCounter(Protocol):
    @property
    def max_tokens(self) -> int: ...

    def tokens(self, text: str) -> list[Any]: ...

    def count(self, text: str) -> int: ...


@dataclass(frozen=True)
class WordCounter:
    """Words and punctuation marks, for when no tokenizer is named."""

    max_tokens: int = 1 << 30

    def tokens(self, text: str) -> list[Any]:
        return re.findall(r"\w+|[^\w\s]", text)

    def count(self, text: str) -> int:
        return len(self.tokens(text))


@dataclass(frozen=True)
class TokenizerCounter:
    """A Hugging Face tokenizer's tokens, special tokens left out."""

    tokenizer: Any
    max_tokens: int = 1 << 30

    def tokens(self, text: str) -> list[Any]:
        ids: list[Any] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def count(self, text: str) -> int:
        return len(self.tokens(text))


@dataclass(frozen=True)
class Document:
    name: str  # path relative to the documents' root
    text: str
    sha256: str


def checkout(git: GitSource, cache: Path) -> Path:
    target = cache / "git" / hashlib.sha256(git.url.encode()).hexdigest()[:16]
    try:
        if not (target / ".git").exists():
            subprocess.run(
                ["git", "clone", "--quiet", git.url, str(target)],
                check=True,
                capture_output=True,
                text=True,
                timeout=600,
            )
        subprocess.run(
            ["git", "-C", str(target), "fetch", "--quiet", "origin"],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        subprocess.run(
            ["git", "-C", str(target), "checkout", "--quiet", "--force", git.revision],
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as error:
        raise WorkloadError(
            f"git {git.url}@{git.revision}: {(error.stderr or '').strip()}"
        ) from None
    return inside(target, git.path, f"git {git.url}, path")


def read_documents(root: Path, include: list[str]) -> list[Document]:
    if not root.is_dir():
        raise WorkloadError(f"documents folder {root} does not exist")
    files = sorted(
        {
            p
            for pattern in include
            for p in root.glob(pattern)
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        }
    )
    documents = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            documents.append(
                Document(
                    str(path.relative_to(root)), text, hashlib.sha256(text.encode()).hexdigest()
                )
            )
    if not documents:
        raise WorkloadError(f"no documents matching {include} under {root}")
    return documents


def chunk(document: Document, chunking: Chunking, counter: TokenCounter) -> list[Any]:
    """Headers first, then token windows; no chunk exceeds the counter's model input."""
    from llama_index.core import Document as LlamaDocument
    from llama_index.core.node_parser import MarkdownNodeParser, SentenceSplitter

    size = min(chunking.chunk_size, counter.max_tokens)
    overlap = min(chunking.chunk_overlap, size // 2)
    splitter = SentenceSplitter(
        chunk_size=size,
        chunk_overlap=overlap,
        tokenizer=counter.tokens,
        include_metadata=False,
    )
    source = LlamaDocument(text=document.text, id_=document.name)
    sections = (
        MarkdownNodeParser().get_nodes_from_documents([source])
        if chunking.split_markdown_headers
        else [source]
    )
    chunks = splitter.get_nodes_from_documents(
        [
            LlamaDocument(text=s.get_content(), id_=f"{document.name}#{i}")
            for i, s in enumerate(sections)
        ]
    )
    for number, node in enumerate(chunks):
        tokens = counter.count(node.get_content())
        if tokens > counter.max_tokens:  # never truncated silently by the model
            raise WorkloadError(
                f"{document.name}: chunk {number} has {tokens} tokens, over "
                f"the model's {counter.max_tokens}"
            )
        node.id_ = f"{document.name}:{document.sha256[:12]}:{number}"
        node.metadata = {
            "document": document.name,
            "document_hash": document.sha256,
            "chunk": number,
        }
        node.excluded_embed_metadata_keys = list(node.metadata)
        node.excluded_llm_metadata_keys = list(node.metadata)
    return list(chunks)


def documents_of(task: DocumentsInput, cache: Path) -> list[Document]:
    root = checkout(task.git, cache) if task.git else Path(task.documents_path or "")
    return read_documents(root, task.include)


def content_hash(settings: str, documents: list[Document]) -> str:
    """sha256 over the settings that shape a result and every document's name and hash."""
    lines = [settings, *(f"{d.name} {d.sha256}" for d in documents)]
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()
