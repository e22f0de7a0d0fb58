"""What a local cluster could leave changed on the host, read so that a test can compare it
before and after: network links, addresses and routes, iptables rules, the kernel settings a
kubelet or kube-proxy sets, mounts, top-level cgroups, podman's containers, and the folders a
kubelet on the host would write."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from crucible.devcluster.containers import ContainerTools

SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/forwarding",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/netfilter/nf_conntrack_max",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
KUBELET_FOLDERS = (
    "/var/lib/kubelet",
    "/var/log/pods",
    "/var/log/containers",
    "/usr/libexec/kubernetes",
    "/var/lib/containerd",
    "/run/containerd",
)


def _run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def host_state() -> dict[str, Any]:
    links = json.loads(_run("ip", "-j", "link") or "[]")
    addresses = json.loads(_run("ip", "-j", "addr") or "[]")
    sysctls = {}
    for name in SYSCTLS:
        path = Path("/proc/sys") / name
        if path.exists():
            sysctls[name] = path.read_text().strip()
    mounts = sorted(
        {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    )
    cgroups = sorted(
        str(p)
        for hierarchy in Path("/sys/fs/cgroup").iterdir()
        for p in hierarchy.glob("*/")
        if p.is_dir()
    )
    containers = ContainerTools()("podman", "ps", "--all", "--format", "{{.Names}}", check=False)
    return {
        "links": sorted(link["ifname"] for link in links),
        "addresses": sorted(
            f"{a['ifname']} {i['local']}/{i['prefixlen']}"
            for a in addresses
            for i in a.get("addr_info", [])
        ),
        "routes": sorted(_run("ip", "route", "show", "table", "all").splitlines()),
        "iptables": sorted(
            re.sub(r" \[\d+:\d+\]$", "", line)  # a chain's packet counters move on
            for line in _run("iptables-save").splitlines() + _run("ip6tables-save").splitlines()
            if line.startswith(("-A", ":", "*"))
        ),
        "sysctls": sysctls,
        "mounts": mounts,
        "cgroups": cgroups,
        "containers": sorted(containers.stdout.split()),
        "kubelet folders": [f for f in KUBELET_FOLDERS if Path(f).exists()],
    }


def changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What differs, item by item: {what: (before, after)}."""
    return {key: (before[key], after[key]) for key in before if before[key] != after[key]}
