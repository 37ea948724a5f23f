#!/usr/bin/env bash
# start-local-slurm.sh - a real single-node SLURM on this machine, for the project's cluster tests.
#
# Runs as root on Debian without systemd. Idempotent: every step first checks whether its result
# is already there (package installed, daemon alive, node idle) and only does what is missing.
#
#   munged (system key)  ->  mariadbd (private datadir, 127.0.0.1:$AA_SLURM_DB_PORT)
#   ->  slurmdbd (so `sacct` works)  ->  slurmctld  ->  slurmd -N localhost (partition `debug`)
#
# Everything it writes lives under $AA_SLURM_DIR (configs in etc/, pids in run/, logs in log/,
# state, spool, MariaDB data). The only things outside it: Debian packages, /etc/munge/munge.key
# (created by the munge package) and /etc/slurm/slurm.conf, a symlink to our slurm.conf so that
# plain `sinfo`, `sbatch`, `sacct` and the Snakemake executor plugin find the cluster without
# SLURM_CONF being set.
#
# Environment:
#   AA_SLURM_DIR      state/config/log folder                     (default /tmp/aa-slurm)
#   AA_SLURM_DB_PORT  TCP port of the private MariaDB on 127.0.0.1 (default 3307)
#   AA_SLURM_GPUS     count of *fake* GPUs (gres without device) on the node, so that jobs asking
#                     for `--gpus=N` (Snakemake resource `gpu: N`) schedule here; 0 = none (default 1)
#   AA_SLURM_INSTALL_ONLY  1 = install the packages and stop there (used by scripts/setup.sh --dev)
#   AA_SLURM_SMOKE    1 = end with `sbatch --wrap true` and wait until sacct says COMPLETED (default 1)
# Stop with stop-local-slurm.sh beside this file (same AA_SLURM_DIR).
set -Eeuo pipefail

DIR=${AA_SLURM_DIR:-/tmp/aa-slurm}
DB_PORT=${AA_SLURM_DB_PORT:-3307}
GPUS=${AA_SLURM_GPUS:-1}
SMOKE=${AA_SLURM_SMOKE:-1}
CLUSTER=aacluster
NODE=localhost
ETC=$DIR/etc
RUN=$DIR/run
LOG=$DIR/log
DB_SOCK=$DIR/mysql/mysqld.sock
DB_PIDFILE=$DIR/mysql/mariadbd.pid # mariadbd runs as user mysql: its pid and log live in its own dir
export SLURM_CONF=$ETC/slurm.conf  # daemons read slurmdbd.conf / gres.conf from the same folder

START_NS=$(date +%s%N)
say() {
  local ds=$((($(date +%s%N) - START_NS) / 100000000))
  printf '[aa-slurm %3d.%ds] %s\n' $((ds / 10)) $((ds % 10)) "$*"
}
die() { say "ERROR: $*" >&2; exit 1; }
dump_logs() {
  say "last lines of the logs in $LOG:" >&2
  for f in "$LOG"/*.log; do
    [ -s "$f" ] || continue
    echo "---- $f" >&2
    tail -n 20 "$f" >&2
  done
}
die_with_logs() { dump_logs; die "$@"; }
on_error() {
  local rc=$? line=$1
  say "FAILED (exit $rc at line $line)" >&2
  dump_logs
  exit "$rc"
}
trap 'on_error $LINENO' ERR

# alive <pidfile>: the process exists and is not a zombie (daemons re-parented to a PID 1 that does
# not reap them stay <defunct>, and `kill -0` would call them alive).
pid_alive() {
  local state
  [ -n "$1" ] || return 1
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}
alive() { pid_alive "$(cat "$1" 2>/dev/null)"; } # alive <pidfile>
dead() { ! alive "$1"; }
# until_ok <seconds> <what> <command...>: poll every 0.25 s; on timeout say so and fail.
until_ok() {
  local limit=$1 what=$2 end
  shift 2
  end=$(($(date +%s) + limit))
  while [ "$(date +%s)" -lt "$end" ]; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  say "timed out after ${limit}s waiting for: $what" >&2
  return 1
}
port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
# refuse to start a daemon whose port is held by a process this script did not start
check_port_free() { # check_port_free <port> <daemon>
  if port_busy "$1"; then
    die "port $1 (needed by $2) is in use by a process not started from $DIR; stop it first" \
      "(e.g. the shared recipe: /work/shared/slurm/stop-local-slurm.sh)"
  fi
}

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts daemons)"
command -v apt-get >/dev/null || die "needs a Debian/Ubuntu system with apt-get"
case $GPUS in '' | *[!0-9]*) die "AA_SLURM_GPUS must be a non-negative integer, got '$GPUS'" ;; esac
mkdir -p "$ETC" "$RUN" "$LOG" "$DIR/state" "$DIR/spool" /etc/slurm
say "folder $DIR (configs in $ETC, logs in $LOG)"

# ---- 1. Debian packages -------------------------------------------------------------------
PKGS=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server mariadb-client)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # without systemd the packages' postinst would try to start their services through the old
  # init scripts; a policy-rc.d answering 101 ("action forbidden") stops that during install.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT # removed however the script ends
  fi
  apt-get update -qq || die "apt-get update failed"
  if ! apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef \
    -o Dpkg::Options::=--force-confold "${missing[@]}" >"$LOG/apt.log" 2>&1; then
    tail -n 30 "$LOG/apt.log" >&2
    die "apt-get install failed (full log: $LOG/apt.log)"
  fi
  rm -f "$LOG/apt.log"
  say "packages installed"
else
  say "packages already installed"
fi
if [ "${AA_SLURM_INSTALL_ONLY:-0}" = 1 ]; then
  say "AA_SLURM_INSTALL_ONLY=1: packages only, nothing started"
  exit 0
fi

# ---- 2. configuration -----------------------------------------------------------------------
# The node must not promise more than slurmd detects, or slurmctld drains it ("Low RealMemory").
HW=$(slurmd -C | head -n 1)
CPUS=$(sed -n 's/.*[[:space:]]CPUs=\([0-9]*\).*/\1/p' <<<"$HW")
MEM_DETECTED=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$HW")
[ -n "$CPUS" ] && [ -n "$MEM_DETECTED" ] || die "cannot parse 'slurmd -C': $HW"
MEM=$((MEM_DETECTED * 95 / 100)) # a little headroom: MemTotal can shrink by a few MB
say "slurmd -C: CPUs=$CPUS RealMemory=$MEM_DETECTED -> node gets CPUs=$CPUS RealMemory=$MEM"

GRES_LINE="" NODE_GRES=""
if [ "$GPUS" -gt 0 ]; then
  GRES_LINE="GresTypes=gpu
AccountingStorageTRES=gres/gpu" # so `sacct -o AllocTRES` shows the GPUs a job got
  NODE_GRES="Gres=gpu:$GPUS"
fi
# CR_CPU_Memory (not CR_Core_Memory): with 2 hyper-threads per core a core-based allocation
# would give every job both CPUs and serialise all jobs. DefMemPerCPU: a job without --mem
# would otherwise get the whole node's memory and block every other job.
cat >"$ETC/slurm.conf.new" <<EOF
# Generated by scripts/slurm/start-local-slurm.sh - rewritten on every start.
ClusterName=$CLUSTER
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1000
ReturnToService=2
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
$GRES_LINE
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM $NODE_GRES State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
if [ "$GPUS" -gt 0 ]; then
  # a gpu gres without File= is counted as 0 by slurmd (node INVAL); /dev/null stands in for the
  # devices. Jobs then see CUDA_VISIBLE_DEVICES=0,... although no CUDA device exists.
  devs=/dev/null
  for _ in $(seq 2 "$GPUS"); do devs="$devs,/dev/null"; done
  echo "NodeName=$NODE Name=gpu Count=$GPUS File=$devs" >"$ETC/gres.conf.new"
else
  : >"$ETC/gres.conf.new"
fi

stop_daemon() { # stop_daemon <name>: SIGTERM via our pid file, wait up to 15 s
  local f=$RUN/$1.pid
  alive "$f" || { rm -f "$f"; return 0; }
  say "config changed: restarting $1"
  kill "$(cat "$f")" 2>/dev/null || true
  until_ok 15 "$1 to exit" dead "$f" || kill -9 "$(cat "$f")" 2>/dev/null || true
  rm -f "$f"
}
if ! cmp -s "$ETC/slurm.conf.new" "$ETC/slurm.conf" || ! cmp -s "$ETC/gres.conf.new" "$ETC/gres.conf"; then
  stop_daemon slurmd
  stop_daemon slurmctld
fi
mv "$ETC/slurm.conf.new" "$ETC/slurm.conf"
mv "$ETC/gres.conf.new" "$ETC/gres.conf"
# clients (and the Snakemake plugin's sbatch/sacct calls) read /etc/slurm/slurm.conf
if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" != "$ETC/slurm.conf" ]; then
  if [ -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
    mv /etc/slurm/slurm.conf "/etc/slurm/slurm.conf.before-aa-slurm"
    say "moved the existing /etc/slurm/slurm.conf to /etc/slurm/slurm.conf.before-aa-slurm"
  fi
  ln -sfn "$ETC/slurm.conf" /etc/slurm/slurm.conf
  say "linked /etc/slurm/slurm.conf -> $ETC/slurm.conf"
fi

# ---- 3. munge -------------------------------------------------------------------------------
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "munged already running"
else
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key; else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
  chmod 700 /etc/munge
  chmod 400 /etc/munge/munge.key
  chmod 755 /run/munge
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged # forks into the background, pid in /run/munge/munged.pid
  until_ok 15 "munged" sh -c 'munge -n | unmunge'
  cp /run/munge/munged.pid "$RUN/munged.pid" # marks munged as ours: stop-local-slurm.sh stops it
  say "munged up"
fi

# ---- 4. MariaDB (private instance) -----------------------------------------------------------
db() { mariadb --no-defaults --socket="$DB_SOCK" -u root "$@"; }
if alive "$DB_PIDFILE" && db -e 'SELECT 1' >/dev/null 2>&1; then
  say "mariadbd already running"
else
  check_port_free "$DB_PORT" mariadbd
  install -d -o mysql -g mysql "$DIR/mysql"
  ln -sfn "$DIR/mysql/mariadb.log" "$LOG/mariadb.log"
  if [ ! -d "$DIR/mysql/data/mysql" ]; then
    say "initialising MariaDB data in $DIR/mysql/data"
    mariadb-install-db --no-defaults --user=mysql --datadir="$DIR/mysql/data" \
      --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install.log" 2>&1
  fi
  say "starting mariadbd on 127.0.0.1:$DB_PORT"
  setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DIR/mysql/data" \
    --socket="$DB_SOCK" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
    --pid-file="$DB_PIDFILE" --log-error="$DIR/mysql/mariadb.log" </dev/null >/dev/null 2>&1 &
  db_pid=$!
  db_up_or_dead() { db -e 'SELECT 1' || ! pid_alive "$db_pid"; } # stop waiting if it died
  until_ok 60 "mariadbd" db_up_or_dead
  db -e 'SELECT 1' >/dev/null || die_with_logs "mariadbd did not come up (see $DIR/mysql/mariadb.log)"
  say "mariadbd up"
fi
# slurmdbd's database user; password kept in the 0600 slurmdbd.conf only
if [ ! -s "$ETC/dbpass" ]; then
  (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$ETC/dbpass")
fi
DBPASS=$(cat "$ETC/dbpass")
db <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF

# ---- 5. slurmdbd ------------------------------------------------------------------------------
(umask 077 && cat >"$ETC/slurmdbd.conf.new" <<EOF
# Generated by scripts/slurm/start-local-slurm.sh - rewritten on every start.
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
EOF
)
if ! cmp -s "$ETC/slurmdbd.conf.new" "$ETC/slurmdbd.conf"; then stop_daemon slurmdbd; fi
mv "$ETC/slurmdbd.conf.new" "$ETC/slurmdbd.conf" # slurmdbd refuses a file others can read
if alive "$RUN/slurmdbd.pid"; then
  say "slurmdbd already running"
else
  check_port_free 6819 slurmdbd
  say "starting slurmdbd"
  slurmdbd
fi
until_ok 60 "slurmdbd to answer (sacctmgr list cluster)" sacctmgr -n list cluster
say "slurmdbd up"

# ---- 6. slurmctld + slurmd ------------------------------------------------------------------
if alive "$RUN/slurmctld.pid"; then
  say "slurmctld already running"
else
  check_port_free 6817 slurmctld
  say "starting slurmctld"
  slurmctld
fi
until_ok 30 "slurmctld (scontrol ping)" sh -c 'scontrol ping | grep -q UP'
say "slurmctld up"
if alive "$RUN/slurmd.pid"; then
  say "slurmd already running"
else
  check_port_free 6818 slurmd
  say "starting slurmd -N $NODE"
  slurmd -N "$NODE" # the node is "localhost", whatever $(hostname) says
fi
node_ready() { sinfo -h -n "$NODE" -o %T | grep -Eqx 'idle|mixed|allocated'; }
if ! until_ok 20 "node $NODE idle" node_ready; then
  # e.g. down/drained state saved by an earlier run that was killed
  say "node is '$(sinfo -h -n "$NODE" -o %T)' ($(sinfo -h -R -n "$NODE" -o %E)); resuming it"
  scontrol update nodename="$NODE" state=resume || true
  if ! until_ok 30 "node $NODE idle" node_ready; then
    die_with_logs "node $NODE stays '$(sinfo -h -n "$NODE" -o %T)': $(sinfo -h -R -n "$NODE" -o %E)"
  fi
fi
say "node $NODE is $(sinfo -h -n "$NODE" -o %T)"
# slurmctld registers the cluster in slurmdbd on its own; sacct needs that
until_ok 30 "cluster $CLUSTER registered in slurmdbd" \
  sh -c "sacctmgr -n -P list cluster format=cluster | grep -qx $CLUSTER"
until_ok 30 "sacct to answer" sacct -n -X -S now-1hours
say "sacct answers"

# ---- 7. smoke test --------------------------------------------------------------------------
if [ "$SMOKE" = 1 ]; then
  jid=$(sbatch --parsable -J aa-slurm-smoke -o /dev/null --wrap true)
  until_ok 60 "smoke job $jid COMPLETED in sacct" \
    sh -c "sacct -n -X -P -j $jid -o State | grep -qx COMPLETED"
  say "smoke job $jid COMPLETED (seen by sacct)"
fi

trap - ERR
say "SLURM ready: cluster=$CLUSTER node=$NODE partition=debug CPUs=$CPUS RealMemory=${MEM}M gpus(fake)=$GPUS"
say "stop with: $(dirname "$(readlink -f "$0")")/stop-local-slurm.sh"
