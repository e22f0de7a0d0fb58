"""podman, buildah and the image registry as the local cluster uses them: every byte they
keep under ~/.cache/crucible (image layers, the registry's blobs), their runtime state under
a folder of the run, and nothing of the host's changed. Containers never get podman's network
(its bridge would add iptables rules and turn on the host's IP forwarding): a node container
gets a network namespace of its own, wired by `crucible.devcluster.node`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from crucible.devcluster import processes
from crucible.devcluster.binaries import cache_dir

REGISTRY_PROGRAM = "docker-registry"  # Debian's name for the CNCF distribution registry
# The name of the registry in the images' references, wherever it listens: each node's
# containerd maps it to the registry's address (crucible.devcluster.node).
REGISTRY_HOST = "localhost:5000"
# The cgroup of the builds' RUN steps, removed after them (podman's default would stay).
BUILD_CGROUP = "/crucible-build"


class ContainerToolError(RuntimeError):
    pass


def _write_if_changed(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


@dataclass(frozen=True)
class ContainerTools:
    """podman and buildah with the project's own configuration: storage under `cache`,
    runtime state under `run` (removed by `cleanup`), runc as the runtime (crun refuses this
    kind of host), cgroupfs (there is no systemd) and limits that root without
    CAP_SYS_RESOURCE may set."""

    cache: Path = field(default_factory=lambda: cache_dir() / "containers")
    run: Path = field(default_factory=lambda: Path(os.environ.get("XDG_RUNTIME_DIR", "/run")))

    @property
    def state(self) -> Path:
        return self.run / f"crucible-containers-{os.getuid()}"

    def environment(self) -> dict[str, str]:
        storage = _write_if_changed(
            self.cache / "storage.conf",
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{self.cache / "storage"}"\n'
            f'runroot = "{self.state / "storage"}"\n'
            "[storage.options.overlay]\n"
            # Without it, the overlay driver bind-mounts its folder onto itself and leaves it.
            'skip_mount_home = "true"\n',
        )
        containers = _write_if_changed(
            self.cache / "containers.conf",
            "[containers]\n"
            'netns = "none"\n'
            'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'tmp_dir = "{self.state / "libpod"}"\n'
            f'volume_path = "{self.cache / "volumes"}"\n',
        )
        return {
            **os.environ,
            "CONTAINERS_STORAGE_CONF": str(storage),
            "CONTAINERS_CONF": str(containers),
            # buildah keeps its RUN --mount=type=cache folders (pip's downloads) under TMPDIR.
            "TMPDIR": str(self.cache / "tmp"),
        }

    def __call__(
        self, tool: str, *args: str, check: bool = True, timeout: float = 3600
    ) -> subprocess.CompletedProcess[str]:
        (self.cache / "tmp").mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [tool, *args],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise ContainerToolError(
                f"{tool} {' '.join(args)} failed ({result.returncode}): {result.stderr[-3000:]}"
            )
        return result

    def popen(
        self, tool: str, args: list[str], log: IO[bytes], cwd: Path
    ) -> subprocess.Popen[bytes]:
        return processes.spawn([tool, *args], log, cwd, self.environment())

    def has_image(self, reference: str) -> bool:
        return self("podman", "image", "exists", reference, check=False).returncode == 0

    def ancestry(self, reference: str) -> list[str]:
        """The image's ID and its parents' (buildah records each layer's cache image)."""
        chain = []
        while reference:
            found = self("podman", "image", "inspect", "--format", "{{.Id}} {{.Parent}}", reference)
            image, _, reference = found.stdout.strip().partition(" ")
            chain.append(image)
        return chain

    def prune_images(self, keep: list[str]) -> int:
        """Remove every image that is neither one of `keep` nor a layer of theirs: the earlier
        builds, which would otherwise fill the disk at several GB each. Their count."""
        kept = {image for reference in keep for image in self.ancestry(reference)}
        listed = self("podman", "images", "--all", "--quiet", "--no-trunc").stdout.split()
        stale = [i.removeprefix("sha256:") for i in dict.fromkeys(listed)]
        stale = [i for i in stale if i not in kept]
        if stale:  # an image a container still uses stays
            self("podman", "rmi", *stale, check=False)
        return len(stale)

    def cleanup(self) -> None:
        """Remove podman's runtime state, once no container of ours is left."""
        if not self("podman", "ps", "--all", "--quiet", check=False).stdout.strip():
            shutil.rmtree(self.state, ignore_errors=True)


@dataclass
class Registry:
    """The CNCF distribution registry, its blobs kept under ~/.cache/crucible/registry so that
    an image pushed once is there for every later node; it listens only while it runs."""

    address: str  # host:port
    workdir: Path
    storage: Path = field(default_factory=lambda: cache_dir() / "registry")
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: IO[bytes] | None = field(default=None, init=False)

    def _config(self) -> Path:
        if shutil.which(REGISTRY_PROGRAM) is None:
            raise ContainerToolError(
                f"{REGISTRY_PROGRAM} not found: hack/setup.sh installs it (Debian's "
                "docker-registry package)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "registry.json"  # YAML is a superset of JSON
        config.write_text(
            json.dumps(
                {
                    "version": 0.1,
                    "log": {"level": "warn"},
                    "storage": {
                        "filesystem": {"rootdirectory": str(self.storage)},
                        "delete": {"enabled": True},
                    },
                    "http": {"addr": self.address},
                }
            )
        )
        return config

    def collect_garbage(self) -> None:
        """Remove the blobs of images no tag names any more (the earlier builds); only while
        it is not serving."""
        assert self._process is None
        subprocess.run(
            [REGISTRY_PROGRAM, "garbage-collect", "--delete-untagged", str(self._config())],
            check=True,
            capture_output=True,
        )

    def start(self, timeout: float = 30) -> None:
        config = self._config()
        self._log = (self.workdir / "registry.log").open("ab")
        self._process = processes.spawn(
            [REGISTRY_PROGRAM, "serve", str(config)], self._log, self.workdir
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                log = (self.workdir / "registry.log").read_text(errors="replace")[-2000:]
                raise ContainerToolError(f"the registry exited on {self.address}:\n{log}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2),
            ):
                return
            if time.monotonic() > deadline:
                raise ContainerToolError(f"the registry did not answer on {self.address}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self._process is not None:
            processes.stop(self._process)
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None


@contextlib.contextmanager
def registry(address: str, workdir: Path) -> Iterator[Registry]:
    running = Registry(address, workdir)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def remove_cgroups(parent: str, root: Path = Path("/sys/fs/cgroup")) -> None:
    """Every cgroup under `parent` in every hierarchy, innermost first (once their processes
    are gone, a cgroup is removed by rmdir)."""
    for hierarchy in root.iterdir():
        top = hierarchy / parent.lstrip("/")
        if not top.is_dir():
            continue
        for folder in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if folder.is_dir():
                with contextlib.suppress(OSError):
                    folder.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()
