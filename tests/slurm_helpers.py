"""Helpers for tests that run the workflow on a real single-node SLURM.

Not a test module: tests marked ``slurm`` import it. The cluster comes from
``scripts/slurm/start-local-slurm.sh``: node ``localhost``, partition ``debug``, slurmdbd so that
``sacct`` works, and one fake GPU so that ``gpu: 1`` rules schedule. The script must run as root
on Debian, because it installs packages and starts daemons.

Typical use::

    from slurm_helpers import local_slurm, local_slurm_unavailable, snakemake_slurm_cmd

    pytestmark = [pytest.mark.slurm,
                  pytest.mark.skipif(bool(local_slurm_unavailable()), reason=str(local_slurm_unavailable()))]

    @pytest.fixture(scope="session")
    def slurm():
        with local_slurm():
            yield

    def test_runs(slurm, tmp_path):
        subprocess.run(snakemake_slurm_cmd(tmp_path, ["--set-resources", "..."]), cwd=tmp_path,
                       check=True, timeout=330)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START_SCRIPT = REPO / "scripts" / "slurm" / "start-local-slurm.sh"
STOP_SCRIPT = REPO / "scripts" / "slurm" / "stop-local-slurm.sh"


def local_slurm_unavailable() -> str | None:
    """Return why the local SLURM cannot be started here, or None if it can.

    The start script needs root, apt/dpkg and `timeout`. Tests use this to skip, rather than fail,
    on a machine without them.
    """
    if not sys.platform.startswith("linux"):
        return "local SLURM needs Linux"
    if os.geteuid() != 0:
        return "local SLURM needs root (it installs Debian packages and starts daemons)"
    for tool in ("apt-get", "dpkg-query", "timeout"):
        if shutil.which(tool) is None:
            return f"local SLURM needs {tool}"
    return None


def slurm_answers() -> bool:
    """True if slurmctld and slurmdbd both answer, i.e. a cluster is already up."""
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
        acct = subprocess.run(["sacct", "-n", "-X", "-S", "now-1hours"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "UP" in ping.stdout and acct.returncode == 0


@contextmanager
def local_slurm(*, stop: bool | None = None, timeout_s: float = 900) -> Iterator[None]:
    """Start the local SLURM (idempotent), yield, then maybe stop it.

    Stopping: with ``stop=None`` (the default), the cluster is stopped on exit only if this call
    started it. A cluster that was already up, for example one started by hand or by an outer
    fixture, is left running. ``stop=True`` always stops it, and ``stop=False`` never does.
    Starting takes about 5 s once the packages are installed, 3 s when the cluster is already up,
    and about a minute more when the packages must be installed first. That cost is why a
    session-scoped fixture is the natural user.

    Raises RuntimeError, with the script's output, if the start script fails or times out. Daemons
    it had already started are then stopped again, unless a cluster was up before the call.
    """
    was_up = slurm_answers()
    env = dict(os.environ)
    if was_up:
        env["AA_SLURM_SMOKE"] = "0"  # it already runs jobs; skip the start script's test job
    try:
        proc = subprocess.run(
            ["bash", str(START_SCRIPT)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as exc:
        if not was_up:
            _stop()
        out = b"".join(x if isinstance(x, bytes) else x.encode() for x in (exc.stdout, exc.stderr) if x)
        raise RuntimeError(f"{START_SCRIPT} timed out after {timeout_s}s:\n{out.decode(errors='replace')}") from exc
    if proc.returncode != 0:
        if not was_up:
            _stop()
        raise RuntimeError(f"{START_SCRIPT} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    try:
        yield
    finally:
        if stop or (stop is None and not was_up):
            _stop()


def _stop() -> None:
    """Run the stop script. It only stops daemons recorded in its pid files."""
    subprocess.run(["bash", str(STOP_SCRIPT)], stdin=subprocess.DEVNULL, capture_output=True, timeout=120)


def snakemake_slurm_cmd(
    workdir: str | os.PathLike[str],
    extra_args: Sequence[str] = (),
    *,
    timeout_s: int = 300,
    jobs: int = 2,
) -> list[str]:
    """Build the command that runs Snakemake with the SLURM executor in ``workdir``.

    - The command is wrapped in ``timeout -k 10 <timeout_s>``, because the plugin can wait
      forever when a job state never arrives, for example when ``sacct`` breaks.
    - ``--slurm-init-seconds-before-status-checks 1``: the plugin's default of 40 s before the
      first status check would dominate short test jobs.
    - ``--slurm-no-account``: the local cluster has no accounts. The option also silences the
      plugin's account guess, which fails with "sacct: invalid option".
    - The default resources fit the local cluster (partition ``debug``). A ``--default-resources``
      in ``extra_args`` replaces them, because the last one given wins. ``extra_args`` may also
      hold targets, ``--set-resources ...`` or ``--profile ...``. Put targets *first*: after a
      multi-value option such as ``--set-resources a:mem_mb=1``, a target is read as one more
      value of that option.

    ``workdir/Snakefile`` is used when it exists and ``extra_args`` names no Snakefile. Run the
    command with ``cwd=workdir`` too: the plugin writes ``.snakemake/slurm_logs`` there.
    """
    workdir = Path(workdir)
    snakemake = Path(sys.executable).with_name("snakemake")  # the same venv as the tests
    cmd = ["timeout", "-k", "10", str(timeout_s), str(snakemake if snakemake.exists() else "snakemake")]
    cmd += ["--directory", str(workdir)]
    if not {"-s", "--snakefile"} & set(extra_args) and (workdir / "Snakefile").exists():
        cmd += ["--snakefile", str(workdir / "Snakefile")]
    cmd += [
        "--executor", "slurm",
        "--jobs", str(jobs),
        "--default-resources", "slurm_partition=debug", "mem_mb=100", "runtime=5",
        "--slurm-init-seconds-before-status-checks", "1",
        "--slurm-no-account",
    ]  # fmt: skip
    return cmd + list(extra_args)
