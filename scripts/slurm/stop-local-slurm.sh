#!/usr/bin/env bash
# stop-local-slurm.sh - stop what start-local-slurm.sh started, newest first, by the pid files in
# $AA_SLURM_DIR/run (and $AA_SLURM_DIR/mysql). Daemons it did not start are left alone: munged only
# stops if the start script started it (it then left run/munged.pid).
#
# Environment:
#   AA_SLURM_DIR    same folder as for the start script   (default /tmp/aa-slurm)
#   AA_SLURM_PURGE  1 = also delete $AA_SLURM_DIR (job state, accounting DB, logs), so the next
#                   start is a fresh cluster (default 0). The /etc/slurm/slurm.conf symlink the
#                   start script made is always removed.
# Always exits 0 unless a daemon survives SIGKILL.
set -uo pipefail

DIR=${AA_SLURM_DIR:-/tmp/aa-slurm}
PURGE=${AA_SLURM_PURGE:-0}
RUN=$DIR/run
export SLURM_CONF=$DIR/etc/slurm.conf
say() { echo "[aa-slurm stop] $*"; }

pid_alive() { # exists and is not a zombie
  local state
  [ -n "$1" ] || return 1
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

failed=0
stop() { # stop <name> <pidfile>: SIGTERM, wait up to 20 s, then SIGKILL
  local name=$1 file=$2 pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  if pid_alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 80); do pid_alive "$pid" || break; sleep 0.25; done
    if pid_alive "$pid"; then
      say "$name ($pid) ignored SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null
      sleep 0.5
      if pid_alive "$pid"; then say "ERROR: $name ($pid) still alive"; failed=1; return; fi
    fi
    say "stopped $name (pid $pid)"
  fi
  rm -f "$file"
}

if [ ! -d "$DIR" ]; then
  say "nothing to stop: $DIR does not exist"
  exit 0
fi

# cancel jobs still queued or running so no slurmstepd outlives slurmd
if pid_alive "$(cat "$RUN/slurmctld.pid" 2>/dev/null)" && command -v squeue >/dev/null; then
  jobs=$(timeout 10 squeue -h -o %i 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    say "cancelling jobs: $(echo $jobs)"
    timeout 10 scancel $jobs || true
    for _ in $(seq 1 40); do
      [ -z "$(timeout 10 squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.25
    done
  fi
fi

stop slurmd "$RUN/slurmd.pid"
stop slurmctld "$RUN/slurmctld.pid"
stop slurmdbd "$RUN/slurmdbd.pid"
stop mariadbd "$DIR/mysql/mariadbd.pid"
if [ -s "$RUN/munged.pid" ]; then
  stop munged "$RUN/munged.pid"
  rm -f /run/munge/munged.pid
fi

# A stopped cluster is not the machine's SLURM any more: drop the /etc/slurm/slurm.conf symlink the
# start script made (and put back a file it moved aside). Left in place, every SLURM client, e.g.
# the Snakemake SLURM plugin's `scontrol show config` at each Snakemake start, would retry the
# absent controller for ~10 s. The next start links it again.
if [ $failed = 0 ] && [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$DIR/etc/slurm.conf" ]; then
  rm -f /etc/slurm/slurm.conf
  if [ -e /etc/slurm/slurm.conf.before-aa-slurm ]; then
    mv /etc/slurm/slurm.conf.before-aa-slurm /etc/slurm/slurm.conf
    say "restored /etc/slurm/slurm.conf from /etc/slurm/slurm.conf.before-aa-slurm"
  else
    say "removed the /etc/slurm/slurm.conf symlink"
  fi
fi
if [ "$PURGE" = 1 ] && [ $failed = 0 ]; then
  rm -rf "$DIR"
  say "removed $DIR"
fi
[ $failed = 0 ] && say "done" || say "some daemons could not be stopped"
exit $failed
