#!/usr/bin/env bash
# Install and start a one-node SLURM cluster on this machine (Debian/Ubuntu, as root), for the SLURM tests
# and for trying slurm/*.sbatch without a cluster. Safe to run again: it only installs, writes or starts
# what is missing. Prints "ready" when `sinfo` shows the node idle.
#
#   sudo bash scripts/local_slurm.sh          # install + start
#   bash scripts/local_slurm.sh --stop        # stop the daemons it started
set -euo pipefail

NODE=$(hostname -s)
# nproc honours OMP_NUM_THREADS, which a test run may set to 1: count the cores this process may use
CPUS=${LOCAL_SLURM_CPUS:-$(OMP_NUM_THREADS= OMP_THREAD_LIMIT= nproc)}
CONF_DIR=/etc/slurm
STATE=/var/spool/slurm-local
LOGS=/var/log/slurm-local
MARK="# One-node cluster written by scripts/local_slurm.sh"

if [[ ${1:-} == --stop ]]; then
  for d in slurmd slurmctld; do
    pid=$(cat "/run/local-slurm-$d.pid" 2>/dev/null || true)
    [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
  done
  # munged only when this script started it
  if [[ -f /run/local-slurm-munged.started ]]; then
    pid=$(cat /run/munge/munged.pid 2>/dev/null || true)
    [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
    rm -f /run/local-slurm-munged.started
  fi
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "local_slurm.sh must run as root (it installs Debian packages and starts daemons)." >&2
  exit 3
fi

need=()
for bin in munged slurmctld slurmd sbatch; do
  command -v "$bin" >/dev/null || need+=("$bin")
done
if ((${#need[@]})); then
  if ! command -v apt-get >/dev/null; then
    echo "local_slurm.sh needs apt-get to install munge and slurm (missing: ${need[*]})." >&2
    exit 3
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # the packages' own service scripts cannot start daemons in a container: block them, start ours below
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# munge: one key shared by controller and node (the same machine)
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null || true
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key

mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" "$LOGS"
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
conf=$(cat <<EOF
$MARK
ClusterName=local
# addresses given explicitly: the machine's own name need not resolve
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job may start again once its old credential expired (default 120 s): 10 s for a test cluster
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=/run/local-slurm-slurmctld.pid
SlurmdPidFile=/run/local-slurm-slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# containers have no usable cgroup hierarchy for slurm: track processes by parent id
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=10
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
)
if [[ -f $CONF_DIR/slurm.conf ]] && ! grep -qxF "$MARK" "$CONF_DIR/slurm.conf"; then
  echo "$CONF_DIR/slurm.conf exists and was not written by this script; leaving this machine's SLURM alone." >&2
  exit 4
fi
restart=0
if [[ ! -f $CONF_DIR/slurm.conf ]] || [[ $(cat "$CONF_DIR/slurm.conf") != "$conf" ]]; then
  echo "$conf" >"$CONF_DIR/slurm.conf"
  restart=1
fi

alive() { local pid; pid=$(cat "$1" 2>/dev/null) && [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; }

if ! alive /run/munge/munged.pid; then
  rm -f /run/munge/munged.pid
  su -s /bin/sh munge -c "munged --force" 2>/dev/null || munged --force
  touch /run/local-slurm-munged.started
fi
if ((restart)); then
  for d in slurmd slurmctld; do
    pid=$(cat "/run/local-slurm-$d.pid" 2>/dev/null || true)
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && sleep 1
  done
fi
alive /run/local-slurm-slurmctld.pid || slurmctld -i
alive /run/local-slurm-slurmd.pid || slurmd

for _ in $(seq 60); do
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
  if [[ $state == idle* || $state == mixed* || $state == allocated* ]]; then
    echo ready
    exit 0
  fi
  if [[ $state == down* || $state == drain* ]]; then
    scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
  fi
  sleep 1
done
echo "local SLURM did not come up; see $LOGS/slurmctld.log and $LOGS/slurmd.log" >&2
exit 1
