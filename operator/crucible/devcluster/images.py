"""`make images`: every image the chart, the operator's pods and the local node name, built with
buildah from the Dockerfiles under images/, on a Debian base made here by mmdebstrap (no
registry reachable from this machine serves python:3.11-slim), and pushed to the local
registry. Layers, pip's downloads and the base are cached under ~/.cache/crucible; the host's
pip configuration and CA bundle are handed to the builds' RUN steps as read-only mounts, never
stored in a layer."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from crucible import __version__
from crucible.devcluster.binaries import cache_dir, versions
from crucible.devcluster.cluster import free_port
from crucible.devcluster.containers import (
    BUILD_CGROUP,
    REGISTRY_HOST,
    ContainerTools,
    registry,
    remove_cgroups,
)

REPOSITORY = Path(__file__).resolve().parents[3]
IMAGES = REPOSITORY / "images"
# The stand-in for python:3.11-slim-bookworm: Debian's own Python 3.11 and pip.
BASE_PACKAGES = ("ca-certificates", "python3", "python3-pip", "python-is-python3")
BASE_IMAGE = "localhost/crucible-python:3.11-bookworm"
DEBIAN_MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PUSH_PORT = 5000


@dataclass(frozen=True)
class Image:
    """One image: its Dockerfile under images/, and the folder it is built from."""

    name: str
    context: Path = REPOSITORY
    pushed: bool = True  # the node image runs under podman; the others are pulled by a node

    @property
    def dockerfile(self) -> Path:
        return IMAGES / self.name / "Dockerfile"

    @property
    def local(self) -> str:
        return f"localhost/crucible-{self.name}:{__version__}"

    @property
    def repository(self) -> str:
        return f"{REGISTRY_HOST}/crucible-{self.name}"


def program_folder(component: str) -> Path:
    """Where hack/build-controlplane.sh left a program of the node's."""
    v = versions()
    version = v["COREDNS_VERSION"] if component == "coredns" else v["K8S_VERSION"]
    return cache_dir() / "bin" / f"{component}-{version}"


def all_images() -> list[Image]:
    return [
        Image("operator"),
        Image("merge"),
        Image("train"),
        Image("rag"),
        Image("eval"),
        Image("vllm"),
        Image("postgres"),
        Image("pause", program_folder("pause")),
        Image("coredns", program_folder("coredns")),
        Image("node", pushed=False),
    ]


def debian_mirrors(root: Path = Path("/")) -> Sequence[str]:
    """Debian bookworm's mirrors as the host's apt knows them (corporate networks have their
    own); the public ones where the host names none."""
    apt = root / "etc" / "apt"
    found = []
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*"))]:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":  # deb822: Types/URIs/Suites/Components stanzas
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w+):\s*(.+)$", stanza, re.MULTILINE))
                if "deb" in fields.get("Types", "").split() and "debian" in fields.get("URIs", ""):
                    for uri in fields["URIs"].split():
                        for suite in fields.get("Suites", "").split():
                            found.append(f"deb {uri} {suite} {fields.get('Components', 'main')}")
        else:
            found += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?\S*debian\S*\s+\S+\s+.*$", text, re.M)
    bookworm = [line for line in found if re.search(r"\sbookworm(-\w+)?\s", line)]
    return bookworm or DEBIAN_MIRRORS


def pip_settings() -> tuple[str, list[Path]]:
    """The host's pip configuration as one pip.conf (its files and PIP_* variables alike), and
    the local paths it names (a CA bundle, a find-links folder), which the builds mount."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    sections: dict[str, dict[str, str]] = {}
    paths = []
    for key, value in re.findall(r"^(\S+?)='(.*)'$", listed, re.MULTILINE):
        section, _, option = key.rpartition(".")
        sections.setdefault("global" if section == ":env:" else section, {})[option] = value
        paths += [Path(p) for p in value.split() if p.startswith("/") and Path(p).exists()]
    text = "".join(
        f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in options.items())
        for section, options in sections.items()
    )
    return text, sorted(set(paths))


@dataclass
class ImageBuilder:
    tools: ContainerTools
    log: Path

    def run(self, *args: str) -> str:
        started = time.monotonic()
        result = self.tools(*args, check=False, timeout=7200)
        with self.log.open("a") as out:
            out.write(f"$ {' '.join(args)}  # {time.monotonic() - started:.1f} s\n")
            out.write(result.stdout + result.stderr)
        if result.returncode:
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({result.returncode}); the end of {self.log}:\n"
                + (result.stdout + result.stderr)[-4000:]
            )
        return result.stdout

    def base(self) -> None:
        """The Debian base, made once and cached as a tarball (~200 MB)."""
        if self.tools.has_image(BASE_IMAGE):
            return
        tarball = cache_dir() / "images" / "debian-bookworm-python.tar"
        if not tarball.exists():
            tarball.parent.mkdir(parents=True, exist_ok=True)
            partial = tarball.with_name(f"{tarball.stem}.partial.tar")  # mmdebstrap: by suffix
            subprocess.run(
                [
                    "mmdebstrap",
                    "--variant=minbase",
                    f"--include={','.join(BASE_PACKAGES)}",
                    # Debian's Python refuses pip outside a virtualenv; the python image does not.
                    '--customize-hook=rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',
                    "--dpkgopt=path-exclude=/usr/share/doc/*",
                    "--dpkgopt=path-exclude=/usr/share/man/*",
                    "--dpkgopt=path-exclude=/usr/share/locale/*",
                    "bookworm",
                    str(partial),
                    *debian_mirrors(),
                ],
                check=True,
                capture_output=True,
            )
            partial.rename(tarball)
        self.run("podman", "import", "--change", 'CMD ["python3"]', str(tarball), BASE_IMAGE)

    def build(self, image: Image, mounts: Sequence[str]) -> None:
        args = ["bud", "--layers", "--network=host", f"--cgroup-parent={BUILD_CGROUP}"]
        args.append(f"--build-arg=BASE={BASE_IMAGE}")
        args += [f"--volume={m}" for m in mounts]
        self.run(
            "buildah", *args, "-f", str(image.dockerfile), "-t", image.local, str(image.context)
        )

    def push(self, image: Image, address: str) -> str:
        """Pushes to the registry at `address`; the reference, pinned by its digest."""
        with tempfile.TemporaryDirectory() as tmp:
            digest_file = Path(tmp) / "digest"
            self.run(
                "podman",
                "push",
                "--tls-verify=false",
                f"--digestfile={digest_file}",
                image.local,
                f"docker://{address}/crucible-{image.name}:{__version__}",
            )
            return f"{image.repository}:{__version__}@{digest_file.read_text().strip()}"

    def size(self, image: Image) -> int:
        return int(self.run("podman", "image", "inspect", "--format", "{{.Size}}", image.local))

    def image_id(self, image: Image) -> str:
        return self.run("podman", "image", "inspect", "--format", "{{.Id}}", image.local).strip()


def references_file() -> Path:
    return cache_dir() / "images" / "images.json"


def _pushed() -> dict[str, dict[str, str]]:
    """name → {"image": local image ID, "reference": where it was pushed, by digest}."""
    path = references_file()
    found: dict[str, dict[str, str]] = json.loads(path.read_text()) if path.exists() else {}
    return found


def built_images() -> dict[str, str]:
    """What the last `make images` pushed: image name → reference pinned by digest."""
    if not references_file().exists():
        raise FileNotFoundError(f"no images built yet ({references_file()}): run `make images`")
    return {name: pushed["reference"] for name, pushed in _pushed().items()}


def push_address() -> str:
    """The registry's address while images are pushed: the same from one build to the next
    where it can be, since podman remembers by registry address which layers it holds
    (another address would have it compress the torch layer again, ~50 s)."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", PUSH_PORT)) != 0:
            return f"127.0.0.1:{PUSH_PORT}"
    return f"127.0.0.1:{free_port()}"


def _in_registry(address: str, reference: str) -> bool:
    repository, _, digest = reference.partition("@")
    name = repository.removeprefix(f"{REGISTRY_HOST}/").rpartition(":")[0]
    request = urllib.request.Request(
        f"http://{address}/v2/{name}/manifests/{digest}", method="HEAD"
    )
    request.add_header("Accept", "application/vnd.oci.image.manifest.v1+json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def build_images(names: Sequence[str] = ()) -> dict[str, str]:
    """Builds the images (all, or those named), pushes those that changed, and records their
    references."""
    images = [i for i in all_images() if not names or i.name in names]
    tools = ContainerTools()
    log = cache_dir() / "images" / "build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    builder = ImageBuilder(tools, log)
    pip_conf, pip_paths = pip_settings()
    with tempfile.TemporaryDirectory(prefix="crucible-images-") as tmp:
        conf = Path(tmp) / "pip.conf"
        conf.write_text(pip_conf)
        mounts = [f"{conf}:/etc/pip.conf:ro"]
        if HOST_CA_BUNDLE.exists():
            mounts.append(f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro")
        mounts += [f"{p}:{p}:ro" for p in pip_paths if p != HOST_CA_BUNDLE]
        started = time.monotonic()
        builder.base()
        print(f"base {BASE_IMAGE}: {time.monotonic() - started:.1f} s", flush=True)
        for image in images:
            started = time.monotonic()
            builder.build(image, mounts)
            print(
                f"{image.local}: built in {time.monotonic() - started:.1f} s, "
                f"{builder.size(image) / 1e9:.2f} GB",
                flush=True,
            )
        pushed = _pushed()
        address = push_address()
        with registry(address, Path(tmp) / "registry") as serving:
            for image in filter(lambda i: i.pushed, images):
                started = time.monotonic()
                identity = builder.image_id(image)
                last = pushed.get(image.name, {})
                if last.get("image") == identity and _in_registry(address, last["reference"]):
                    continue
                pushed[image.name] = {"image": identity, "reference": builder.push(image, address)}
                print(
                    f"{pushed[image.name]['reference']}: pushed in "
                    f"{time.monotonic() - started:.1f} s",
                    flush=True,
                )
        serving.collect_garbage()
    references_file().write_text(json.dumps(pushed, indent=2, sort_keys=True) + "\n")
    remove_cgroups(BUILD_CGROUP)
    removed = tools.prune_images([BASE_IMAGE, *(i.local for i in all_images())])
    print(f"{removed} images of earlier builds removed", flush=True)
    tools.cleanup()
    return built_images()
