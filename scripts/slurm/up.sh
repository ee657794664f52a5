#!/usr/bin/env bash
# Start a local 2-node SLURM cluster on this one machine, for tests and CI.
#
# Installs Debian's slurm-wlm and munge (needs root and apt), writes /etc/slurm/slurm.conf for
# two nodes (node1, node2) that both run here on 127.0.0.1 with their own slurmd ports, starts
# munged, slurmctld and one `slurmd -N` per node, and waits until `sinfo` shows both idle.
# Stop it with scripts/slurm/down.sh. Safe to run twice: a running cluster is left as it is.
#
# Environment: VLCD_SLURM_STATE (default /tmp/vlcd-slurm) holds logs, spool and state;
# VLCD_SLURM_CPUS (default: nproc) is the CPU count each node advertises.
set -euo pipefail

STATE=${VLCD_SLURM_STATE:-/tmp/vlcd-slurm}
CPUS=${VLCD_SLURM_CPUS:-$(nproc)}
CONF=/etc/slurm/slurm.conf
MARK="# written by vlcd-dist scripts/slurm/up.sh"
HOST=$(hostname -s)

say() { echo "[slurm-up] $*"; }

if [ "$(id -u)" != 0 ]; then
  echo "[slurm-up] must run as root (installs packages, starts daemons)" >&2
  exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  say "installing slurm-wlm and munge (apt)"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the packages' maintainer scripts from starting the daemons (with the packaged
  # defaults, and in a container without an init system): this script starts them itself.
  POLICY=/usr/sbin/policy-rc.d
  if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$POLICY" && chmod 0755 "$POLICY"
    trap 'rm -f "$POLICY"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
  command -v slurmctld >/dev/null && command -v munged >/dev/null \
    || { echo "[slurm-up] slurm-wlm/munge installed but slurmctld or munged not found" >&2; exit 1; }
fi

if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  echo "[slurm-up] $CONF exists and was not written by this script; not touching a real cluster" >&2
  exit 1
fi

# Up = the controller and both slurmd run, and both nodes answer (a trailing * in sinfo's state
# means "not responding"); idle or busy with jobs does not matter.
nodes_ready() {
  [ "$(sinfo -h -N -o '%N %T' 2>/dev/null \
        | awk '$2 ~ /^(idle|mixed|allocated|completing)$/ {print $1}' | sort -u | wc -l)" = 2 ]
}
cluster_up() {
  pgrep -x slurmctld >/dev/null || return 1
  pgrep -f "slurmd -N node1" >/dev/null || return 1
  pgrep -f "slurmd -N node2" >/dev/null || return 1
  nodes_ready
}
if [ -f "$CONF" ] && cluster_up; then
  say "cluster already up"; sinfo -N; exit 0
fi

# Node names must resolve; both are this machine.
for node in node1 node2; do
  if ! getent hosts "$node" >/dev/null; then
    echo "127.0.0.1 $node" >> /etc/hosts \
      || { echo "[slurm-up] cannot add $node to /etc/hosts; make it resolve to 127.0.0.1" >&2; exit 1; }
  fi
done

mkdir -p "$STATE"/{ctld,spool} /etc/slurm /run/munge /var/log/munge /var/lib/munge /etc/munge
# Memory each node advertises: a quarter of the machine, so two nodes fit with room to spare.
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 4 ))

cat > "$CONF" <<CONFEOF
$MARK
ClusterName=vlcd-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=6817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmdTimeout=120
KillWait=10
MinJobAge=600
NodeName=node1 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17001 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
NodeName=node2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17002 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONFEOF
# No cgroup.conf: with proctrack/linuxproc and task/none nothing needs cgroups (containers
# here have none to give).
if [ -f /etc/slurm/cgroup.conf ] && grep -qF "$MARK" /etc/slurm/cgroup.conf; then
  rm -f /etc/slurm/cgroup.conf
fi

# munge: a key, then the daemon as the munge user it was packaged for.
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 0700 /etc/munge /var/log/munge /var/lib/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged
fi
munge -n | unmunge >/dev/null || { echo "[slurm-up] munge does not work" >&2; exit 1; }

pgrep -x slurmctld >/dev/null || slurmctld
for node in node1 node2; do
  mkdir -p "$STATE/spool/$node"
  pgrep -f "slurmd -N $node" >/dev/null || slurmd -N "$node"
done

say "waiting for both nodes to answer"
for _ in $(seq 1 60); do
  nodes_ready && break
  # Nodes that registered before the controller knew them come up "down"; resume them.
  scontrol update nodename=node1,node2 state=resume >/dev/null 2>&1 || true
  sleep 1
done
# A node restored from saved state can look idle before its slurmd has registered: run one task
# on each node to know the cluster really takes 2-node jobs.
if nodes_ready && timeout 120 srun --nodes=2 --ntasks-per-node=1 --time=1 \
    --job-name=slurm-up-check true >/dev/null 2>&1; then
  # Let the check job finish completing, so the nodes read idle to whoever looks next.
  for _ in $(seq 1 30); do
    sinfo -h -N -o '%T' 2>/dev/null | grep -q '^completing' || break
    sleep 1
  done
  sinfo -N
  say "cluster up (logs in $STATE)"
  exit 0
fi
echo "[slurm-up] nodes did not come up, or a 2-node test step failed; see $STATE/*.log" >&2
sinfo -N -l >&2 || true
tail -n 20 "$STATE"/*.log >&2 || true
exit 1
