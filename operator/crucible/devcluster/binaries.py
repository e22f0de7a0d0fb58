"""Where the control plane's programs are: envtest's assets when KUBEBUILDER_ASSETS names
them, otherwise the builds of hack/build-controlplane.sh cached under ~/.cache/crucible."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

VERSIONS_FILE = Path(__file__).with_name("versions.env")


def versions() -> dict[str, str]:
    """The pinned versions (versions.env), shared with the build script."""
    pinned = {}
    for raw in VERSIONS_FILE.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pinned[key] = value
    return pinned


def cache_dir() -> Path:
    return Path(os.environ.get("CRUCIBLE_CACHE", Path.home() / ".cache" / "crucible"))


class MissingBinaryError(RuntimeError):
    pass


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path
    helm: Path


def find_binaries() -> Binaries:
    v = versions()
    bin_dir = cache_dir() / "bin"
    k8s = bin_dir / f"k8s-{v['K8S_VERSION']}"
    found = {
        "etcd": bin_dir / f"etcd-{v['ETCD_VERSION']}" / "etcd",
        "kube_apiserver": k8s / "kube-apiserver",
        "kube_controller_manager": k8s / "kube-controller-manager",
        "kube_scheduler": k8s / "kube-scheduler",
        "kubectl": k8s / "kubectl",
        "kwok": bin_dir / f"kwok-{v['KWOK_VERSION']}" / "kwok",
        "helm": bin_dir / f"helm-{v['HELM_VERSION']}" / "helm",
    }
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:  # envtest ships etcd, kube-apiserver and kubectl only
        for name in ("etcd", "kube-apiserver", "kubectl"):
            path = Path(assets) / name
            if path.exists():
                found[name.replace("-", "_")] = path
    missing = [str(p) for p in found.values() if not os.access(p, os.X_OK)]
    if missing:
        raise MissingBinaryError(
            "control-plane programs not found: "
            + ", ".join(missing)
            + "; build them with hack/build-controlplane.sh (or `make setup`)"
        )
    return Binaries(**found)
