"""Every regular expression the CRDs carry is one of crucible.api.formats, and each reads the
same to the API server (Go's RE2) and to the operator (Python's re) on tricky input: Unicode
spaces, look-alike letters, '..', empty segments, a final newline. Go's engine is the real
one, built from a few lines of Go."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from crucible.api.crd import render_crds
from crucible.api.formats import FORMATS, ModelLocation

GO_CHECKER = """package main

import (
	"encoding/json"
	"os"
	"regexp"
)

func main() {
	var cases struct {
		Patterns []string `json:"patterns"`
		Inputs   []string `json:"inputs"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	out := make([][]bool, len(cases.Patterns))
	for i, p := range cases.Patterns {
		re := regexp.MustCompile(p)
		out[i] = []bool{}
		for _, s := range cases.Inputs {
			out[i] = append(out[i], re.MatchString(s))
		}
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""

TRICKY = [
    "",
    "a b",
    "a\u00a0b",  # no-break space: \\s to Python, not to Go
    "a\u2003b",  # em space
    "a\tb",
    "abc\n",  # Python's $ matches before a final newline
    "\u0430bc",  # Cyrillic a
    "\uff41bc",  # fullwidth a
    "..",
    "a/../b",
    "a//b",
    "-a",
    "a-",
    "a.b",
    "A",
    "qa.jsonl",
    "hf://org/name",
    "hf://org/name@main",
    "hf://org/na me",
    "hf://org/na\u00a0me",
    "hf://datasets/",
    "hf://datasets/org/name",
    "s3:///key",
    "s3://bucket/key",
    "pvc://claim/",
    "pvc://claim/path/../x",
    "https://api.openai.com/v1",
    "https://api.openai.com/v1\u00a0",
    "git@github.com:janhq/nitro.git",
    "64Gi",
    "-1",
    "500m",
    "1e3",
    "nvidia.com/gpu",
    "nitro_docs",
    "1table",
]


@pytest.fixture(scope="module")
def go_checker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("needs Go (README: set-up needs it for the control plane) to run RE2")
    folder = tmp_path_factory.mktemp("re2")
    (folder / "main.go").write_text(GO_CHECKER)
    binary = folder / "re2"
    subprocess.run(
        [go, "build", "-o", str(binary), "main.go"],
        cwd=folder,
        check=True,
        env={"GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "PATH": "/usr/bin:/bin",
             "HOME": str(folder), "GOCACHE": str(Path.home() / ".cache" / "go-build")},
    )  # fmt: skip
    return binary


def go_matches(checker: Path, patterns: list[str], inputs: list[str]) -> list[list[bool]]:
    cases = json.dumps({"patterns": patterns, "inputs": inputs})
    out = subprocess.run([str(checker)], input=cases, capture_output=True, text=True, check=True)
    result: list[list[bool]] = json.loads(out.stdout)
    return result


def crd_expressions() -> list[str]:
    """Every `pattern` and every CEL matches() literal of the generated CRDs."""
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                found.add(node["pattern"])
            for rule in node.get("x-kubernetes-validations") or []:
                for literal in re.findall(r"matches\('((?:[^'\\]|\\.)*)'\)", rule["rule"]):
                    found.add(literal.encode().decode("unicode_escape"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for text in render_crds().values():
        walk(yaml.safe_load(text))
    return sorted(found)


def test_every_expression_in_the_crds_is_a_format_with_words() -> None:
    """No bare pattern, no expression written twice: each comes from crucible.api.formats,
    whose message says in words what is expected."""
    anchored = {f"^(?:{f.regex})$" for f in FORMATS}
    expressions = crd_expressions()
    assert expressions, "no expression found in the CRDs"
    assert set(expressions) <= anchored, set(expressions) - anchored


def test_each_format_checks_alike_in_the_operator_and_the_api_server(go_checker: Path) -> None:
    """The API server matches a format's anchored expression with Go's RE2, the operator
    with Python's fullmatch: on every tricky input they agree."""
    inputs = [*TRICKY, *(f.example for f in FORMATS)]
    anchored = [f"^(?:{f.regex})$" for f in FORMATS]
    go = go_matches(go_checker, anchored, inputs)
    for fmt, answers in zip(FORMATS, go, strict=True):
        assert answers[len(TRICKY) + FORMATS.index(fmt)], f"{fmt.what}: its own example fails"
        for text, in_go in zip(inputs, answers, strict=True):
            try:
                fmt.check(text)
                in_python = True
            except ValueError as error:
                in_python = False
                assert str(error) == fmt.message and "e.g." in fmt.message
            assert in_python == in_go, f"{fmt.what} on {text!r}: Go {in_go}"


@pytest.mark.parametrize(
    ("uri", "scheme", "root", "path", "revision"),
    [
        ("pvc://models/team/evalruns/bench/", "pvc", "models", "team/evalruns/bench/", ""),
        ("hf://HuggingFaceTB/SmolLM2-135M@main", "hf", "HuggingFaceTB/SmolLM2-135M", "", "main"),
        ("hf://datasets/org/name", "hf", "datasets/org/name", "", ""),
        ("s3://bucket/models/a", "s3", "bucket", "models/a", ""),
    ],
)  # fmt: skip
def test_a_model_uri_is_read_once_into_its_parts(
    uri: str, scheme: str, root: str, path: str, revision: str
) -> None:
    location = ModelLocation.parse(uri)
    assert (location.scheme, location.root, location.path, location.revision) == (
        scheme,
        root,
        path,
        revision,
    )
    assert str(location) == uri
    assert ModelLocation.claim_of(uri) == (root if scheme == "pvc" else None)


def test_a_uri_of_another_scheme_is_refused_with_the_schemes_to_use() -> None:
    with pytest.raises(ValueError, match="unsupported scheme; use pvc://, hf:// or s3://"):
        ModelLocation.parse("gs://bucket/model")
    assert ModelLocation.claim_of("https://example.com/model") is None
