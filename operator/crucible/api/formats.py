"""The string formats of the API, each said once: a regular expression both the API server and
the operator check, and what it means in words, with an example, for the message a mistake
gets (a bare expression tells a user nothing).

The API server checks CRD patterns and CEL's matches() with Go's RE2; the operator checks with
Python's re. They read \\s, \\S, \\w and \\d differently beyond ASCII (a non-breaking space is
\\s to Python, not to Go), and Python's $ also matches before a final newline. So these
expressions use explicit ASCII classes only — [!-~] is the printable ASCII characters but the
space — and are matched whole (CEL's rule anchors them; Python uses fullmatch)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, Field

PRINTABLE = "[!-~]"  # printable ASCII, no space
NAME_PART = "[A-Za-z0-9][-A-Za-z0-9_.]*"  # a Hugging Face organisation or repository


@dataclass(frozen=True)
class Format:
    what: str  # "a model URI"
    regex: str  # matched whole; ASCII classes only
    words: str  # what it is, in words
    example: str

    @property
    def message(self) -> str:
        return f"must be {self.what}: {self.words}, e.g. {self.example}"

    def rule(self, subject: str = "self") -> dict[str, Any]:
        """The CEL rule the API server checks on `subject`, with the message in words."""
        literal = "'" + f"^(?:{self.regex})$".replace("\\", "\\\\").replace("'", "\\'") + "'"
        return {"rule": f"{subject}.matches({literal})", "message": self.message}

    def check(self, value: str) -> str:
        """The same check in the operator."""
        if re.fullmatch(self.regex, value) is None:
            raise ValueError(self.message)
        return value

    def about(self, what: str) -> Format:
        """The same format under another name, e.g. "the name of a RagIndex"."""
        return replace(self, what=what)

    def field(
        self,
        *,
        description: str,
        max_length: int,
        rules: tuple[dict[str, Any], ...] = (),
        **extra: Any,
    ) -> Any:
        """A pydantic Field of this format and any further CEL `rules` (its type: a string
        `checked` by the same format)."""
        return Field(
            description=description,
            max_length=max_length,
            json_schema_extra={"x-kubernetes-validations": [self.rule(), *rules]},
            **extra,
        )


def checked(fmt: Format) -> Any:
    """A string the operator checks with `fmt`, as the API server does with its rule."""
    return Annotated[str, AfterValidator(fmt.check)]


DNS_LABEL = Format(
    "a DNS label",
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?",
    "lowercase letters, digits and '-', starting and ending with a letter or digit",
    "nitro-docs",
)
# What a Service's name must be (and so the name of a resource whose children include one).
DNS_1035_LABEL = Format(
    "a DNS-1035 label",
    "[a-z]([-a-z0-9]*[a-z0-9])?",
    "lowercase letters, digits and '-', starting with a letter and ending with a letter or "
    "digit (no '.')",
    "quickstart-eval",
)
OBJECT_NAME = Format(
    "the name of a Kubernetes object",
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*",
    "lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
    "nitro-docs",
)
OBJECT_KEY = Format(
    "a ConfigMap or Secret key",
    "\\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*",
    "letters, digits, '-', '_' and '.', not '.' and not starting with '..'",
    "qa.jsonl",
)
MODEL_URI = Format(
    "a model URI",
    f"hf://{NAME_PART}/{NAME_PART}(@{PRINTABLE}+)?"
    f"|s3://[a-z0-9][-a-z0-9.]*/{PRINTABLE}*"
    f"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/{PRINTABLE}*",
    "hf://organisation/name with an optional @revision, s3://bucket/prefix or "
    "pvc://claim/path, in printable ASCII without spaces",
    "hf://HuggingFaceTB/SmolLM2-135M-Instruct",
)


class Scheme(StrEnum):
    PVC = "pvc"
    HF = "hf"
    S3 = "s3"


@dataclass(frozen=True)
class ModelLocation:
    """A model URI (MODEL_URI's, or a run's output) read once: `root` is the claim, the hub's
    repository or the bucket; `path` the path in the claim or the prefix in the bucket;
    `revision` the hub's, if any."""

    scheme: Scheme
    root: str
    path: str = ""
    revision: str = ""

    @classmethod
    def parse(cls, uri: str) -> ModelLocation:
        scheme, separator, rest = uri.partition("://")
        if not separator or scheme not in {s.value for s in Scheme}:
            raise ValueError(f"{uri}: unsupported scheme; use pvc://, hf:// or s3://")
        if scheme == Scheme.HF:
            name, _, revision = rest.partition("@")
            return cls(Scheme.HF, name, revision=revision)
        root, _, path = rest.partition("/")
        return cls(Scheme(scheme), root, path)

    @classmethod
    def claim_of(cls, uri: str) -> str | None:
        """The PersistentVolumeClaim a pvc:// URI lives on; None for any other URI."""
        return cls.parse(uri).root if uri.startswith(f"{Scheme.PVC}://") else None

    def __str__(self) -> str:
        if self.scheme == Scheme.HF:
            return f"hf://{self.root}" + (f"@{self.revision}" if self.revision else "")
        return f"{self.scheme}://{self.root}/{self.path}"


DATA_URI = Format(
    "a data URI",
    f"s3://[a-z0-9][-a-z0-9.]*/{PRINTABLE}+"
    f"|https?://[A-Za-z0-9][-A-Za-z0-9.]*(:[0-9]+)?/{PRINTABLE}*"
    f"|hf://datasets/{NAME_PART}/{NAME_PART}(@{PRINTABLE}+)?",
    "s3://bucket/key, https://host/path or hf://datasets/organisation/name, in printable "
    "ASCII without spaces",
    "s3://my-bucket/qa/train.jsonl",
)
ENDPOINT_URL = Format(
    "an http(s) URL",
    f"https?://[A-Za-z0-9][-A-Za-z0-9.]*(:[0-9]+)?(/{PRINTABLE}*)?",
    "http:// or https://, a host, an optional port and path, in printable ASCII without spaces",
    "https://api.openai.com/v1",
)
GIT_URL = Format(
    "a git repository URL",
    f"(https?|ssh|git)://{PRINTABLE}+|[!-?A-~]+@[!-9;-~]+:{PRINTABLE}+",
    "https://, ssh:// or git:// URL, or user@host:path, in printable ASCII without spaces",
    "https://github.com/janhq/nitro.git",
)
RESOURCE_NAME = Format(
    "an extended resource name",
    "([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9_.]*[a-z0-9])?",
    "an optional domain and '/', then lowercase letters, digits, '-', '_' and '.'",
    "nvidia.com/gpu",
)
SQL_TABLE = Format(
    "a table name",
    "[a-z_][a-z0-9_]*",
    "lowercase letters, digits and '_', not starting with a digit",
    "nitro_docs",
)
# A Kubernetes quantity that is not negative: a decimal number with a binary (Ki…Ei), decimal
# (n, u, m, k, M…E) or exponent suffix.
QUANTITY = Format(
    "a non-negative quantity",
    "([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|([eE][-+]?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)))?",
    "a number with an optional suffix such as m, Ki, Mi or Gi",
    "64Gi",
)

FORMATS = (
    DNS_LABEL,
    DNS_1035_LABEL,
    OBJECT_NAME,
    OBJECT_KEY,
    MODEL_URI,
    DATA_URI,
    ENDPOINT_URL,
    GIT_URL,
    RESOURCE_NAME,
    SQL_TABLE,
    QUANTITY,
)

# The types of formatted fields.
DnsLabel = checked(DNS_LABEL)
ObjectName = checked(OBJECT_NAME)
ObjectKey = checked(OBJECT_KEY)
ModelUri = checked(MODEL_URI)
DataUri = checked(DATA_URI)
EndpointUrl = checked(ENDPOINT_URL)
GitUrl = checked(GIT_URL)
ResourceName = checked(RESOURCE_NAME)
SqlTable = checked(SQL_TABLE)
