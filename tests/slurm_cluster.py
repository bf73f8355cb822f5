"""A throwaway single-node SLURM cluster (Debian's slurm-wlm 22.05 + MUNGE) for tests that submit real jobs.

Why a real one: the sbatch script, requeueing and the submitit launcher depend on what SLURM itself does
(signals to the batch shell, a requeued job pending with reason ``BeginTime``, srun's task environment,
job arrays), which no mock reproduces.

Everything lives under one directory: its own MUNGE key and socket, ``slurm.conf``, state, spool and
logs, on ports that were free, so it meets neither a system SLURM nor another test session's cluster.
The daemons run in the foreground as children of the test process (stopping them is terminating our
own children), as root (``SlurmUser=root``) and without cgroups (``proctrack/linuxproc``,
``task/none``), which is what a container allows. Client commands find the cluster through
``SLURM_CONF``: run them with :meth:`SlurmCluster.env`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = REPO / ".ci" / "install_slurm.sh"
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "srun", "squeue", "scancel")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])  # daemons live in sbin
# States a job leaves only by being requeued or purged (scontrol keeps them for MinJobAge).
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED"}


class SlurmError(RuntimeError):
    """The cluster could not be installed or started, or a job did not reach the awaited state."""


def ensure_installed() -> str | None:
    """Install slurm-wlm and munge with apt if a tool is missing. Returns why SLURM is unavailable
    (not root, no apt-get, the install failed), or None when every tool is there."""
    if all(shutil.which(t, path=SEARCH_PATH) for t in TOOLS):
        return None
    if os.geteuid() != 0:
        return "SLURM is not installed and installing it needs root (.ci/install_slurm.sh)"
    if not shutil.which("apt-get"):
        return "SLURM is not installed and apt-get is unavailable to install slurm-wlm and munge"
    r = subprocess.run(["bash", str(INSTALL_SCRIPT)], text=True, capture_output=True, timeout=900)
    if r.returncode != 0:
        return f"{INSTALL_SCRIPT.name} failed ({r.returncode}): {(r.stdout + r.stderr)[-1500:]}"
    missing = [t for t in TOOLS if not shutil.which(t, path=SEARCH_PATH)]
    return f"still missing after {INSTALL_SCRIPT.name}: {', '.join(missing)}" if missing else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_job(text: str) -> dict[str, str]:
    """``scontrol show job -o`` output (``Key=value`` words) as a dict."""
    return dict(re.findall(r"(\w+)=(\S*)", text))


class SlurmCluster:
    """``slurmctld`` + ``slurmd`` with one node of ``cpus`` CPUs named after this host, on loopback."""

    def __init__(self, root: Path, cpus: int = 2):
        self.root = Path(root)
        self.cpus = cpus
        self.node = socket.gethostname().split(".")[0]  # slurmd registers under the short host name
        self.conf = self.root / "slurm.conf"
        self.logs = self.root / "log"
        self._procs: list[tuple[str, subprocess.Popen]] = []

    def write_config(self) -> None:
        """The key, directories and slurm.conf; ports are free ones so parallel sessions do not meet."""
        for sub in ("state", "spool", "log", "run", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        r = self.root
        self.conf.write_text("\n".join([
            "ClusterName=nlvideo-test",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={r}/munge/munge.socket",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ReturnToService=2",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "KillWait=10",  # SIGTERM -> SIGKILL of a cancelled job; bounds a test's teardown
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/run/slurmctld.pid",
            f"SlurmdPidFile={r}/run/slurmd.pid",
            f"SlurmctldLogFile={self.logs}/slurmctld.log",
            f"SlurmdLogFile={self.logs}/slurmd.log",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def env(self, base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
        """``base`` (default: this process's environment) pointed at this cluster. SLURM_*, SBATCH_* ...
        variables are dropped: a test session that itself runs inside a SLURM job must not pass its own
        job's settings to the jobs it submits."""
        env = {k: v for k, v in (base or os.environ).items()
               if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SUBMITIT_"))}
        env["PATH"] = SEARCH_PATH
        env["SLURM_CONF"] = str(self.conf)
        env.update(extra)
        return env

    def _spawn(self, name: str, *args: str) -> None:
        out = open(self.logs / f"{name}.stdout", "w")  # noqa: SIM115 - the daemon owns it until stop()
        proc = subprocess.Popen([shutil.which(name, path=SEARCH_PATH), *args], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        self._procs.append((name, proc))

    def start(self, timeout: float = 60) -> None:
        """Start munged, slurmctld and slurmd; return once ``sinfo`` shows the node idle."""
        try:  # jobs use it as MASTER_ADDR (scontrol show hostnames, submitit)
            socket.gethostbyname(self.node)
        except OSError as exc:
            raise SlurmError(f"host name {self.node!r} does not resolve ({exc}): jobs could not reach "
                             "their rendezvous; add it to /etc/hosts") from None
        self.write_config()
        m = self.root / "munge"
        # --force: munged refuses root and group/world-writable parents such as /tmp without it.
        self._spawn("munged", "--foreground", "--force", f"--socket={m}/munge.socket",
                    f"--key-file={m}/munge.key", f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log",
                    f"--seed-file={m}/munged.seed")
        self._wait_for(lambda: (m / "munge.socket").exists(), timeout, "munged to open its socket")
        self._spawn("slurmctld", "-D", "-f", str(self.conf))
        self._spawn("slurmd", "-D", "-f", str(self.conf))
        self.wait_until_idle(timeout)

    def wait_until_idle(self, timeout: float) -> None:
        """Return once ``sinfo`` shows the node idle: no job on it, none still completing."""
        self._wait_for(lambda: self.node_state() == "idle", timeout, "the node to be idle in sinfo")

    def _wait_for(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [f"{name} exited with status {p.returncode}" for name, p in self._procs
                    if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                reason = "; ".join(dead) or f"timed out after {timeout:.0f} s"
                raise SlurmError(f"waiting for {what}: {reason}\n{self.log_tail()}")
            time.sleep(0.2)

    def node_state(self) -> str:
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env(), text=True, capture_output=True,
                           timeout=30)
        return r.stdout.strip() if r.returncode == 0 else ""

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of every daemon log, for failure messages."""
        parts = []
        for path in sorted([*self.logs.glob("*"), self.root / "munge" / "munged.log"]):
            if path.is_file():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append("\n".join([f"--- {path.name}", *tail]))
        return "\n".join(parts)

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """A client command (``scontrol``, ``scancel`` ...) against this cluster."""
        r = subprocess.run(list(args), env=self.env(), text=True, capture_output=True, timeout=timeout)
        if check and r.returncode != 0:
            raise SlurmError(f"{' '.join(args)} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r

    def sbatch(self, args: Iterable[str], env: dict[str, str] | None = None, cwd: Path = REPO) -> int:
        """Submit; returns the job id. ``env`` is the job's environment (sbatch exports all of it)."""
        r = subprocess.run(["sbatch", "--parsable", *args], env=env or self.env(), cwd=cwd, text=True,
                           capture_output=True, timeout=60)
        if r.returncode != 0:
            raise SlurmError(f"sbatch failed ({r.returncode}): {r.stdout}{r.stderr}")
        return int(r.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """The job's ``scontrol show job`` fields (JobState, Reason, Restarts, ExitCode ...)."""
        return parse_job(self.run("scontrol", "show", "job", "-o", str(job_id)).stdout)

    def wait_for_state(self, job_id: int, states: Iterable[str], timeout: float,
                       reason: str | None = None) -> dict[str, str]:
        """Poll until the job's state is one of ``states`` (and its Reason is ``reason``, if given: a
        requeued job is PENDING a moment before slurmctld gives the reason); raises
        :class:`SlurmError` on timeout, or when the job finished in another state."""
        want, deadline = set(states), time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.get("JobState") in want and reason in (None, job.get("Reason")):
                return job
            if job.get("JobState") in FINISHED - want or time.monotonic() > deadline:
                raise SlurmError(f"job {job_id} is {job.get('JobState')} (reason {job.get('Reason')}), "
                                 f"waited for {sorted(want)}" + (f" with reason {reason}" if reason else ""))
            time.sleep(0.3)

    def stop(self) -> None:
        """Cancel what is still queued or running, then stop the daemons (newest first)."""
        if self._procs and all(p.poll() is None for _, p in self._procs):
            ids = self.run("squeue", "-h", "-o", "%A", check=False).stdout.split()
            if ids:
                self.run("scancel", *ids, check=False)
                deadline = time.monotonic() + 30
                while self.run("squeue", "-h", check=False).stdout.strip() and time.monotonic() < deadline:
                    time.sleep(0.5)
        for _, proc in reversed(self._procs):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
