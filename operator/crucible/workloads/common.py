"""What every workload shares: reading the task, finding models, reporting, failing clearly,
and writing results so that no half-written output is ever visible."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import ssl
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from pydantic import BaseModel

from crucible.api.contract import (
    REPORT_TOKEN_DIR,
    REPORT_TOKEN_FILE,
    TERMINATION_MESSAGE_BYTES,
    TaskBase,
    WorkloadReport,
    pack_summary,
)
from crucible.api.formats import ModelLocation, Scheme

log = logging.getLogger("crucible.workload")
T = TypeVar("T", bound=TaskBase)
# Where the kubelet reads the termination message (the pods' terminationMessagePath): a file
# it creates in the container, so a workload run elsewhere leaves none.
TERMINATION_LOG = Path("/dev/termination-log")
# The pod's token for the report endpoint (its audience names the run), which the kubelet
# renews: read again for every push.
REPORT_TOKEN = Path(REPORT_TOKEN_DIR) / REPORT_TOKEN_FILE
# A report write or push not answered in this time is given up: the work is done, and its
# termination message says so anyway.
REPORT_WRITE_TIMEOUT_SECONDS = 10


class WorkloadError(RuntimeError):
    """The run cannot succeed; the message says what is wrong and what to change."""


def parse_task(argv: list[str] | None, task_type: type[T], description: str) -> T:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--task", required=True, help="task JSON written by the operator")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return task_type.model_validate_json(Path(args.task).read_text())


def fail(message: str) -> NoReturn:
    """End the pod with `message` as its termination message (what the operator reports)."""
    log.error(message)
    if TERMINATION_LOG.exists():
        with contextlib.suppress(OSError):
            TERMINATION_LOG.write_text(message[-TERMINATION_MESSAGE_BYTES:])
    print(message, file=sys.stderr)
    raise SystemExit(1)


def run_main(work: Any, argv: list[str] | None, task_type: type[T], description: str) -> int:
    """Parse the task, run `work(task)`, turn WorkloadError into a clear failure."""
    task = parse_task(argv, task_type, description)
    # A deleted pod gets SIGTERM: unwind, so that atomic outputs remove their staging.
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    try:
        work(task)
    except WorkloadError as error:
        fail(str(error))
    return 0


# -- models and files -----------------------------------------------------------------------


def inside(root: Path, relative: str, what: str) -> Path:
    """`relative` under `root`, refused when it leaves it ('..' segments, an absolute path):
    a workload reaches nothing past the volume or checkout a spec names. Lexical, as the
    volume's own symbolic links are its owner's business."""
    base = Path(os.path.normpath(root))
    target = Path(os.path.normpath(base / relative))
    if target != base and base not in target.parents:
        raise WorkloadError(f"{what}: {relative!r} leaves {base}; name a path inside it")
    return target


def resolve_uri(uri: str, mounts: dict[str, str], cache: Path) -> Path:
    """A local directory (or file) for a model or data URI.

    pvc://claim/path is read where the operator mounted the claim; hf://org/name@revision is
    fetched with huggingface_hub (HF_TOKEN and HF_HUB_OFFLINE apply); s3://bucket/prefix is
    fetched with an S3 client (the usual AWS_* variables apply).
    """
    try:
        parsed = ModelLocation.parse(uri)
    except ValueError as error:
        raise WorkloadError(str(error)) from error
    if parsed.scheme == Scheme.PVC:
        if parsed.root not in mounts:
            raise WorkloadError(f"{uri}: PersistentVolumeClaim {parsed.root!r} is not mounted")
        local = inside(Path(mounts[parsed.root]), parsed.path, uri)
        if not local.exists():
            raise WorkloadError(f"{uri}: {local} does not exist")
        return local
    if parsed.scheme == Scheme.HF:
        return _from_hub(parsed, cache)
    return _from_s3(parsed, cache)


def _from_hub(uri: ModelLocation, cache: Path) -> Path:
    from huggingface_hub import snapshot_download

    name, revision = uri.root, uri.revision
    repo_type = "model"
    if name.startswith("datasets/"):
        repo_type, name = "dataset", name.removeprefix("datasets/")
    try:
        return Path(
            snapshot_download(
                repo_id=name,
                revision=revision or None,
                repo_type=repo_type,
                cache_dir=cache / "hub",
            )
        )
    except Exception as error:  # the hub's errors are many; the message says which
        raise WorkloadError(f"{uri}: cannot download from the Hugging Face Hub: {error}") from error


def _from_s3(uri: ModelLocation, cache: Path) -> Path:
    """Download every object under an S3 prefix. boto3 cannot share an environment with the
    kubernetes client (python-dateutil), so this uses MinIO's S3 client: AWS_ENDPOINT_URL
    (default AWS), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION apply."""
    from urllib.parse import urlparse

    from minio import Minio

    bucket, prefix = uri.root, uri.path
    endpoint = urlparse(os.environ.get("AWS_ENDPOINT_URL") or "https://s3.amazonaws.com")
    client = Minio(
        endpoint.netloc,
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        region=os.environ.get("AWS_REGION"),
        secure=endpoint.scheme == "https",
    )
    target = cache / "s3" / bucket / prefix
    try:
        keys = [o.object_name for o in client.list_objects(bucket, prefix=prefix, recursive=True)]
        if not keys:
            raise WorkloadError(f"{uri}: no objects under this prefix")
        for key in keys:
            assert key is not None
            client.fget_object(bucket, key, str(cache / "s3" / bucket / key))
    except WorkloadError:
        raise
    except Exception as error:
        raise WorkloadError(f"{uri}: cannot download from S3: {error}") from error
    return target if target.exists() else target.parent


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Write into a sibling temporary directory and rename it into place only on success:
    readers never see a half-written model, and a crash leaves nothing at `final`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- reporting ------------------------------------------------------------------------------


class Reporter:
    """Tells the operator what the workload did. Its end (`finish`) becomes the container's
    termination message, which needs no credential and outlives the operator and any outage of
    the API server. A task that names the operator's report endpoint also gets every report
    there (a fine-tune's progress while it trains), POSTed with the pod's token for that
    endpoint alone. Outside any cluster, each report goes to CRUCIBLE_REPORT_FILE."""

    def __init__(self, task: TaskBase) -> None:
        self.task = task
        self.file = os.environ.get("CRUCIBLE_REPORT_FILE")
        self.report = WorkloadReport()

    def update(self, **fields: Any) -> None:
        self.report = self.report.model_copy(update=fields)
        document = json.dumps(self.report.to_api())
        log.info("report: %s", document)
        if self.file:
            Path(self.file).write_text(document)
        elif self.task.report_url:
            self._push(self.task.report_url, document)

    def finish(self, **fields: Any) -> None:
        """The last report: the termination message first, as it cannot fail for want of the
        operator or the API server, then the push if the task names the endpoint."""
        summary, packed = pack_summary(self.report.model_copy(update=fields))
        if summary.left_out:
            log.warning(
                "the report exceeds the %d bytes of a termination message once packed; its "
                "summary there leaves out %s, which only the push carries",
                TERMINATION_MESSAGE_BYTES,
                ", ".join(summary.left_out),
            )
        if TERMINATION_LOG.exists():
            TERMINATION_LOG.write_text(packed)
        self.update(**fields)

    def _push(self, url: str, document: str) -> None:
        try:
            request = urllib.request.Request(url, data=document.encode(), method="POST")
            request.add_header("Authorization", f"Bearer {REPORT_TOKEN.read_text().strip()}")
            request.add_header("Content-Type", "application/json")
            context = ssl.create_default_context(cadata=self.task.report_ca)
            with urllib.request.urlopen(
                request, context=context, timeout=REPORT_WRITE_TIMEOUT_SECONDS
            ):
                pass
        except OSError as error:  # URLError and SSLError too: reporting must not fail the work
            log.warning("could not push the report to %s: %s", url, error)


def write_json(path: Path, document: BaseModel | dict[str, Any]) -> None:
    data = document.model_dump(mode="json") if isinstance(document, BaseModel) else document
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
