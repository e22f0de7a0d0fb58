#!/bin/sh
# The node's processes: containerd, then the kubelet and kube-proxy, with the configuration
# crucible.devcluster.node wrote to /etc/crucible-node. It stops them all on SIGTERM, and the
# node stops when any of them exits.
set -eu
ETC=/etc/crucible-node
LOGS=/var/log/crucible-node
mkdir -p "$LOGS"

# The kubelet sets these kernel settings, which no namespace isolates: on the host they would
# change for good. Each is covered, in this container's mount namespace only, by a file holding
# its current value, which the kubelet reads and writes instead.
for setting in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops \
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes; do
  copy=/run/crucible-node/sysctl/$setting
  mkdir -p "$(dirname "$copy")"
  cat "/proc/sys/$setting" > "$copy"
  mount --bind "$copy" "/proc/sys/$setting"
done

# The host wires eth0 (a veth on its bridge) once this container exists.
until ip -4 addr show dev eth0 2>/dev/null | grep -q inet; do sleep 0.1; done

pids=""
kubernetes=""
stop() {
  trap - TERM INT
  # The kubelet and kube-proxy first, then every container gets SIGTERM and up to 10 s to end
  # (a workload removes what it had half written), as a node shut down gracefully gives them;
  # whatever is left dies with this container.
  # shellcheck disable=SC2086
  kill -TERM $kubernetes 2>/dev/null || true
  for task in $(ctr --namespace k8s.io tasks list --quiet 2>/dev/null); do
    ctr --namespace k8s.io tasks kill --signal SIGTERM "$task" 2>/dev/null || true
  done
  for _ in $(seq 20); do
    ctr --namespace k8s.io tasks list 2>/dev/null | grep -q RUNNING || break
    sleep 0.5
  done
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  wait
  exit "$1"
}
trap 'stop 0' TERM INT

containerd --config "$ETC/containerd.toml" > "$LOGS/containerd.log" 2>&1 &
pids="$pids $!"
until [ -S /run/containerd/containerd.sock ]; do sleep 0.1; done
# shellcheck disable=SC2046
kubelet $(cat "$ETC/kubelet.flags") > "$LOGS/kubelet.log" 2>&1 &
kubernetes="$kubernetes $!"
kube-proxy --config="$ETC/kube-proxy.yaml" > "$LOGS/kube-proxy.log" 2>&1 &
kubernetes="$kubernetes $!"
pids="$pids $kubernetes"

# Any of them exiting stops the node (wait -n is not POSIX: poll).
while :; do
  for pid in $pids; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "process $pid exited; stopping the node (logs in $LOGS)" >&2
      stop 1
    fi
  done
  sleep 1
done
