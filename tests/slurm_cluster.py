"""A throwaway single-node Slurm (munged, slurmctld, slurmd) in a temporary folder.

Why: submitit's debug executor and a mocked sbatch cannot show that a sweep really runs, is
capped, fails, requeues and resumes under a controller; the tests marked `slurm` use this one.

Everything lives under one folder (config, munge key and socket, state, spool, logs); the ports
are two free ones picked at start, so it cannot clash with another Slurm on the machine. Client
commands reach it through SLURM_CONF (see `env`). To try the launcher by hand:

    python tests/slurm_cluster.py /tmp/slurm    # until Ctrl-C (or SIGTERM), which stops it

A requeued job waits `cred_expire` seconds (AuthInfo; 120 by default) before it may start again;
20 here keeps the preemption test short.

Accounting: there is no slurmdbd, so `sacct` cannot answer (submitit then logs "Bypassing sacct
error" and the job states it reports are UNKNOWN). Nothing in the sweep code asks submitit for
states: a run's state is its DONE/ERROR/LOCK markers in the sweep dir. So no accounting storage
is configured; jobs are instead logged at completion by jobcomp/filetxt, which gives the tests
Slurm's own record of each job (start, end, state) to check the markers against.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "sbatch", "squeue", "scontrol", "scancel", "srun")
SBIN = "/usr/sbin:/sbin"
NODE_CPUS = 4  # Declared (config_overrides): more than any test's array cap, on any machine.
NODE_MEMORY_MB = 4096

SLURM_CONF = """\
ClusterName=recon3dtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket,cred_expire=20
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt
KillWait=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class Unavailable(Exception):
  """Slurm cannot be brought up here; the message says why (tests skip with it)."""


def missing_requirement() -> str | None:
  """Why a local Slurm cannot run on this machine, or None if it can."""
  path = os.environ.get("PATH", "") + ":" + SBIN
  missing = [b for b in DAEMONS + CLIENTS if not shutil.which(b, path=path)]
  if missing:
    return (f"Slurm is not installed ({', '.join(missing)} missing); "
            "apt-get install slurm-wlm munge (as .ci/run does)")
  if os.geteuid() != 0:
    return "slurmd must run as root to start jobs as their user; run the tests as root"
  return None


def _free_ports(n: int) -> list[int]:
  """`n` distinct TCP ports free at this moment (never Slurm's defaults 6817/6818)."""
  sockets = [socket.socket() for _ in range(n)]
  try:
    for s in sockets:
      s.bind(("127.0.0.1", 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


class Cluster:
  """A single-node Slurm under `root`: `start()` waits until the node is idle, `stop()` cancels
  every job and ends the daemons."""

  def __init__(self, root: str):
    self.root = os.path.abspath(root)
    self.conf = os.path.join(self.root, "slurm.conf")
    self.host = socket.gethostname().split(".")[0]
    self.env = dict(os.environ, SLURM_CONF=self.conf, PATH=os.environ["PATH"] + ":" + SBIN)
    self._daemons: list[subprocess.Popen] = []

  def start(self, timeout_s: float = 120) -> None:
    """Writes the config and key, starts the daemons; raises Unavailable (with their log tails)
    if the node is not idle within `timeout_s`."""
    reason = missing_requirement()
    if reason:
      raise Unavailable(reason)
    self._write_files()
    munge = os.path.join(self.root, "munge")
    self._spawn("munged", "--foreground", "--force", f"--socket={munge}/munge.socket",
                f"--key-file={munge}/munge.key", f"--pid-file={munge}/munged.pid",
                f"--seed-file={munge}/munged.seed", f"--log-file={self.root}/log/munged.log")
    self._wait_for(lambda: os.path.exists(f"{munge}/munge.socket"), 30, "munged's socket")
    self._spawn("slurmctld", "-D", "-c", "-f", self.conf)
    self._spawn("slurmd", "-D", "-N", self.host, "-f", self.conf)
    self._wait_for(self._node_idle, timeout_s, "the node to be idle in sinfo")

  def _write_files(self) -> None:
    for sub in ("munge", "state", "spool", "log"):
      os.makedirs(os.path.join(self.root, sub), exist_ok=True)
    os.chmod(self.root, 0o755)  # munged wants its socket's folders searchable by all.
    key = os.path.join(self.root, "munge", "munge.key")
    with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o400), "wb") as f:
      f.write(os.urandom(1024))
    ctld_port, slurmd_port = _free_ports(2)
    with open(self.conf, "w") as f:
      f.write(SLURM_CONF.format(host=self.host, root=self.root, ctld_port=ctld_port,
                                slurmd_port=slurmd_port, cpus=NODE_CPUS,
                                memory=NODE_MEMORY_MB))

  def _spawn(self, daemon: str, *args: str) -> None:
    log = open(os.path.join(self.root, "log", f"{daemon}.out"), "w")
    with log:
      self._daemons.append(subprocess.Popen(
          [shutil.which(daemon, path=self.env["PATH"]), *args], env=self.env, stdout=log,
          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))

  def _wait_for(self, ready, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while not ready():
      dead = [p.args[0] for p in self._daemons if p.poll() is not None]
      if dead or time.time() > deadline:
        why = f"{dead} exited" if dead else f"no {what} after {timeout_s:.0f} s"
        raise Unavailable(f"local Slurm did not start ({why}):\n{self.log_tails()}")
      time.sleep(0.5)

  def _node_idle(self) -> bool:
    result = self.run("sinfo", "--noheader", "--format=%T", check=False)
    return result.returncode == 0 and result.stdout.strip() == "idle"

  def log_tails(self, lines: int = 8) -> str:
    """The last lines of every daemon's log (what to read when something went wrong)."""
    out = []
    for name in sorted(os.listdir(os.path.join(self.root, "log"))):
      with open(os.path.join(self.root, "log", name), errors="replace") as f:
        tail = f.read().splitlines()[-lines:]
      out.append(f"--- {name}\n" + "\n".join(tail))
    return "\n".join(out)

  def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    """Runs a Slurm client command against this cluster; with `check`, a failure raises with
    the command's stderr."""
    result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
    if check and result.returncode:
      raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr}")
    return result

  def jobs(self) -> list[dict]:
    """The jobs Slurm knows now (array tasks one by one): id, state, reason."""
    out = self.run("squeue", "--noheader", "--array", "--format=%i|%T|%r").stdout
    return [dict(zip(("id", "state", "reason"), line.split("|")))
            for line in out.splitlines() if line.strip()]

  def completions(self) -> list[dict]:
    """Slurm's completion records (jobcomp/filetxt), one dict of its KEY=VALUE fields per
    ended job (a requeued job has one per attempt)."""
    path = os.path.join(self.root, "log", "jobcomp.txt")
    if not os.path.exists(path):
      return []
    with open(path) as f:
      return [dict(field.split("=", 1) for field in line.split() if "=" in field)
              for line in f if line.strip()]

  def stop(self) -> None:
    """Cancels every job, waits for them to end, then ends the daemons (munged last)."""
    if any(p.poll() is None for p in self._daemons):
      self.run("scancel", f"--user={os.getuid()}", check=False)
      deadline = time.time() + 60
      while time.time() < deadline and self._squeue_ok_and_busy():
        time.sleep(0.5)
    for process in reversed(self._daemons):
      if process.poll() is None:
        process.send_signal(signal.SIGTERM)
      try:
        process.wait(timeout=30)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    self._daemons.clear()

  def _squeue_ok_and_busy(self) -> bool:
    result = self.run("squeue", "--noheader", check=False)
    return result.returncode == 0 and bool(result.stdout.strip())


def main() -> None:
  """Brings a cluster up under argv[1] (or a new temporary folder) until Ctrl-C or SIGTERM."""
  root = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="slurm_")
  signal.signal(signal.SIGTERM, signal.default_int_handler)  # Stops cleanly, as Ctrl-C does.
  cluster = Cluster(root)
  try:
    cluster.start()
    print(f"Slurm is up; in another shell: export SLURM_CONF={cluster.conf}", flush=True)
    signal.pause()
  except KeyboardInterrupt:
    pass
  finally:
    cluster.stop()


if __name__ == "__main__":
  main()
