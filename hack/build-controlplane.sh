#!/usr/bin/env bash
# Builds the programs of the local cluster the test suite and `crucible dev up` run, from the Go
# module proxy: the control plane (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, etcd), the node's (kubelet, kube-proxy, CoreDNS, and the pause program from
# Kubernetes' own source), kwok and helm. No registry ships these binaries, so they are compiled
# once per version and cached under ~/.cache/crucible/bin/<component>-<version>/; later runs only
# check that they are there.
set -euo pipefail

# The versions live in one place, shared with crucible.devcluster.
# shellcheck source=../operator/crucible/devcluster/versions.env
. "$(dirname "$0")/../operator/crucible/devcluster/versions.env"
CACHE=${CRUCIBLE_CACHE:-$HOME/.cache/crucible}

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

log() { printf '[build-controlplane] %s\n' "$*" >&2; }

# k8s.io/kubernetes replaces its staging modules with ./staging/...: a wrapper module maps each
# one to its published v0.x version so `go build` can resolve them.
STAGING=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
  cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
  cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms
  kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
  mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller)
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)

build_kubernetes() {
  local out="$CACHE/bin/k8s-$K8S_VERSION"
  local missing=0
  for b in "${K8S_BINARIES[@]}"; do [ -x "$out/$b" ] || missing=1; done
  [ $missing = 0 ] && { log "kubernetes $K8S_VERSION cached in $out"; return; }
  local staging_version="v0.${K8S_VERSION#v1.}"
  local minor; minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  local work="$CACHE/src/k8s-$K8S_VERSION"
  rm -rf "$work"; mkdir -p "$work" "$out"
  cd "$work"
  {
    echo "module crucible.dev/k8s-wrapper"
    echo
    echo "go 1.24"
    echo
    echo "replace ("
    for m in "${STAGING[@]}"; do echo "	k8s.io/$m => k8s.io/$m $staging_version"; done
    echo ")"
  } > go.mod
  log "resolving k8s.io/kubernetes $K8S_VERSION"
  for b in "${K8S_BINARIES[@]}"; do
    go get -tool "k8s.io/kubernetes/cmd/$b@$K8S_VERSION"
  done
  go mod tidy
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean"
  done
  log "compiling ${K8S_BINARIES[*]} (the first time takes a while)"
  local pkgs=(); for b in "${K8S_BINARIES[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  go build -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}"
}

build_etcd() {
  local out="$CACHE/bin/etcd-$ETCD_VERSION"
  [ -x "$out/etcd" ] && { log "etcd $ETCD_VERSION cached in $out"; return; }
  local work="$CACHE/src/etcd-$ETCD_VERSION"
  rm -rf "$work"; mkdir -p "$work" "$out"
  cd "$work"
  printf 'module crucible.dev/etcd-wrapper\n\ngo 1.24\n' > go.mod
  go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  go mod tidy
  log "compiling etcd $ETCD_VERSION"
  go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
}

# The pod sandbox's pause program, compiled from the C source Kubernetes ships in its module
# (build/pause/linux/pause.c), static: the pause image holds nothing else.
build_pause() {
  local out="$CACHE/bin/pause-$K8S_VERSION"
  [ -x "$out/pause" ] && { log "pause $K8S_VERSION cached in $out"; return; }
  local source
  source=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$out"
  log "compiling pause from $source/build/pause/linux/pause.c"
  gcc -Os -Wall -Werror -static -DVERSION="$K8S_VERSION" -o "$out/pause" \
    "$source/build/pause/linux/pause.c"
}

go_install() {  # name module/cmd version [ldflags]
  local name=$1 pkg=$2 version=$3 extra=${4:-}
  local out="$CACHE/bin/$name-$version"
  [ -x "$out/$name" ] && { log "$name $version cached in $out"; return; }
  mkdir -p "$out"
  log "compiling $name $version"
  GOBIN="$out" go install -trimpath -ldflags "-s -w $extra" "$pkg@$version"
}

build_etcd
build_kubernetes
build_pause
go_install coredns github.com/coredns/coredns "$COREDNS_VERSION"
go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
log "done"
