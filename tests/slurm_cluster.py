"""Real SLURM clusters for the launcher tests (Debian's slurm-wlm 22.05 and munge, `make sysdeps`).

``running(dir, nodes=1)``: ``slurmctld`` and one ``slurmd`` on localhost, the node named after this
host.

``running(dir, nodes=2)``: one ``slurmctld`` on this host and two ``slurmd``, ``node1`` and
``node2``, each in its own network, UTS and mount namespaces (``unshare``, so root): its own
hostname, its own ``/etc/hosts`` (bind-mounted inside its mount namespace only) and its own address
on a private /24 that the cluster creates. A bridge in a third namespace (the "switch") joins a veth
from each node and one from this host, the only interface the cluster adds here (it carries the
address slurmctld listens on); the nodes have no route anywhere else, so every packet stays between
addresses made here, and when the namespaces' last processes exit the kernel deletes the veths with
them. Both nodes share this host's file system, as cluster nodes share theirs.

Both clusters authenticate with munge (one ``munged`` with a fresh key, on a socket in a temporary
directory, which every daemon and client reaches through ``AuthInfo``). ``SLURM_CONF`` points every
client, and the launcher, at the cluster while it runs. The daemons run in sessions of their own, so
a Ctrl-C at the terminal reaches only the Python process, which then stops them in order.

By hand (as root): ``python -m tests.slurm_cluster DIR`` (docs/launch.md, "Tests").
"""
from __future__ import annotations

import getpass
import ipaddress
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel", "scontrol", "munged")
NAMESPACE_BINARIES = ("ip", "unshare", "nsenter")  # the two-node cluster's


def which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")


def missing_binaries(nodes: int) -> list[str]:
    return [b for b in SLURM_BINARIES + (NAMESPACE_BINARIES if nodes > 1 else ()) if which(b) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    """One ``slurmd``; in the two-node cluster also the namespace holder it runs in."""

    name: str
    addr: str
    holder: subprocess.Popen | None = None  # `sleep` in the node's namespaces (None: this host's)
    slurmd: subprocess.Popen | None = None

    def namespace(self) -> str | None:
        return os.readlink(f"/proc/{self.holder.pid}/ns/net") if self.holder is not None else None


@dataclass
class Cluster:
    dir: Path
    conf: Path
    nodes: dict[str, Node]
    daemons: list[subprocess.Popen] = field(default_factory=list)  # munged, slurmctld
    switch: subprocess.Popen | None = None
    host_link: str | None = None
    hosts_file: Path | None = None
    munge_dir: Path | None = None

    def sinfo(self) -> dict[str, str]:
        """``{node: state}`` as slurmctld sees them (idle, alloc, down*, ...)."""
        out = subprocess.run([which("sinfo"), "-h", "-N", "-o", "%N %t"], capture_output=True, text=True)
        return dict(line.split() for line in out.stdout.splitlines() if line.strip())

    def wait_state(self, names: list[str], states: tuple[str, ...], timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            now = self.sinfo()
            if all(now.get(n) in states for n in names):
                return
            dead = [p.args for p in self.daemons if p.poll() is not None]
            dead += [n.name for n in self.nodes.values() if n.slurmd is not None and n.slurmd.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"nodes {names} not {states} (sinfo: {now}; exited: {dead})\n{self.logs()}")
            time.sleep(0.3)

    def logs(self) -> str:
        files = sorted(self.dir.glob("*.log")) + sorted(self.dir.glob("*.err"))
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-2500:]}" for f in files)

    def start_node(self, name: str) -> None:
        """(Re)start a node: its namespaces (two-node cluster) and its slurmd."""
        node = self.nodes[name]
        argv = [which("slurmd"), "-D", "-f", str(self.conf)]
        if self.switch is not None:
            node.holder = _namespace_holder(["--net", "--uts", "--mount", "--propagation", "private"])
            _wire_node(self, node)
            argv = ["nsenter", "-t", str(node.holder.pid), "-n", "-u", "-m", *argv, "-N", name]
        err = open(self.dir / f"slurmd-{name}.err", "a")
        node.slurmd = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)

    def kill_node(self, name: str) -> list[int]:
        """The node dies: SIGKILL to every process in its namespaces (slurmd, slurmstepd, the job's
        tasks, the holder), as a crash or power loss would. Returns the pids killed."""
        node = self.nodes[name]
        if node.holder is None:
            raise ValueError("only a node in its own namespaces can be killed")
        pids = processes_in(node.namespace())
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in (node.slurmd, node.holder):
            p.wait(timeout=10)
        return pids

    def stop(self) -> None:
        if all(p.poll() is None for p in self.daemons):
            subprocess.run([which("scancel"), "--user", getpass.getuser()], capture_output=True, timeout=30)
        for node in self.nodes.values():
            if node.slurmd is not None and node.slurmd.poll() is None:
                _terminate(node.slurmd)
            if node.holder is not None and node.holder.poll() is None:
                self.kill_node(node.name)  # also what the jobs left running there
        for p in reversed(self.daemons):
            _terminate(p)
        if self.switch is not None:
            _terminate(self.switch)
            # the kernel deletes the host's veth with the switch's namespace, but asynchronously
            subprocess.run(["ip", "link", "del", self.host_link], capture_output=True)
        if self.munge_dir is not None:
            shutil.rmtree(self.munge_dir, ignore_errors=True)


def _terminate(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def processes_in(net_namespace: str) -> list[int]:
    """Pids of the processes in the network namespace ``net_namespace`` (``net:[inode]``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/net") == net_namespace:
                    pids.append(int(entry))
            except OSError:  # exited meanwhile
                pass
    return pids


def _run(*argv: str) -> None:
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {out.returncode}: {out.stderr.strip()}")


def _namespace_holder(flags: list[str]) -> subprocess.Popen:
    """``sleep`` in new namespaces; returns once they exist (so nothing is ever entered too early,
    which would configure this host instead)."""
    p = subprocess.Popen(["unshare", *flags, "sleep", "infinity"], start_new_session=True)
    kinds = ["net"] + (["uts", "mnt"] if "--uts" in flags else [])
    deadline = time.monotonic() + 10
    while any(os.readlink(f"/proc/{p.pid}/ns/{k}") == os.readlink(f"/proc/self/ns/{k}") for k in kinds):
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"unshare {' '.join(flags)} did not start (exit {p.poll()}): needs root")
        time.sleep(0.01)
    return p


def _in(p: subprocess.Popen, *argv: str, kinds: tuple[str, ...] = ("-n",)) -> None:
    _run("nsenter", "-t", str(p.pid), *kinds, *argv)


def _wire_node(cluster: Cluster, node: Node) -> None:
    """A veth from the switch's bridge into the node's fresh namespaces; its address, hostname, hosts file."""
    port = f"to-{node.name}"
    _in(cluster.switch, "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0",
        "netns", str(node.holder.pid))
    _in(cluster.switch, "ip", "link", "set", port, "master", "br0")
    _in(cluster.switch, "ip", "link", "set", port, "up")
    _in(node.holder, "ip", "addr", "add", f"{node.addr}/24", "dev", "eth0")
    _in(node.holder, "ip", "link", "set", "eth0", "up")
    _in(node.holder, "ip", "link", "set", "lo", "up")
    _in(node.holder, "hostname", node.name, kinds=("-u",))
    _in(node.holder, "mount", "--bind", str(cluster.hosts_file), "/etc/hosts", kinds=("-m",))


def _private_subnet() -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 that no address or route of this host touches (other test runs included)."""
    used = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    used += subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    nets = [ipaddress.ip_network(w, strict=False) for w in used.split() if w[:1].isdigit() and "/" in w]
    for _ in range(100):
        net = ipaddress.ip_network(f"10.{random.randint(128, 254)}.{random.randint(0, 254)}.0/24")
        if not any(net.overlaps(n) for n in nets if n.prefixlen > 0):
            return net
    raise RuntimeError("no free 10.x.y.0/24 for the test cluster")


def slurm_conf(d: Path, ctld: tuple[str, str], nodes: list[Node], cpus: int, munge_socket: Path) -> str:
    user = getpass.getuser()
    node_lines = "\n".join(f"NodeName={n.name} NodeAddr={n.addr} CPUs={cpus} State=UNKNOWN" for n in nodes)
    return textwrap.dedent(f"""\
        ClusterName=nemotest
        SlurmctldHost={ctld[0]}({ctld[1]})
        SlurmUser={user}
        SlurmdUser={user}
        AuthType=auth/munge
        CredType=cred/munge
        AuthInfo=socket={munge_socket}
        SlurmctldPort={free_port()}
        SlurmdPort={free_port()}
        StateSaveLocation={d}/state
        SlurmdSpoolDir={d}/spool-%n
        SlurmctldPidFile={d}/slurmctld.pid
        SlurmdPidFile={d}/slurmd-%n.pid
        SlurmctldLogFile={d}/slurmctld.log
        SlurmdLogFile={d}/slurmd-%n.log
        ProctrackType=proctrack/linuxproc
        TaskPlugin=task/none
        SelectType=select/cons_tres
        SelectTypeParameters=CR_CPU
        SchedulerType=sched/builtin
        AccountingStorageType=accounting_storage/none
        JobAcctGatherType=jobacct_gather/none
        JobCompType=jobcomp/none
        MpiDefault=none
        ReturnToService=2
        SlurmdTimeout=6
        KillWait=5
        SlurmdParameters=config_overrides
        {node_lines}
        PartitionName=debug Nodes={",".join(n.name for n in nodes)} Default=YES MaxTime=INFINITE State=UP
        """)


def _start_munge(cluster: Cluster) -> Path:
    # munged wants every directory above its socket searchable by all and its key private:
    # pytest's tmp directories are 0700, so munge gets its own directory under /tmp.
    cluster.munge_dir = Path(tempfile.mkdtemp(prefix="nemo-munge-"))
    cluster.munge_dir.chmod(0o755)
    key = cluster.munge_dir / "munge.key"
    key.touch(mode=0o600)
    key.write_bytes(os.urandom(128))
    sock = cluster.munge_dir / "munge.socket"
    cluster.daemons.append(subprocess.Popen(
        [which("munged"), "--foreground", f"--key-file={key}", f"--socket={sock}",
         f"--pid-file={cluster.munge_dir}/munged.pid", f"--seed-file={cluster.munge_dir}/munged.seed",
         f"--log-file={cluster.dir}/munged.log"],
        stdout=subprocess.DEVNULL, stderr=open(cluster.dir / "munged.err", "w"), start_new_session=True))
    deadline = time.monotonic() + 10
    while not sock.exists():
        if cluster.daemons[-1].poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"munged did not start\n{cluster.logs()}")
        time.sleep(0.05)
    return sock


@contextmanager
def running(d: Path, nodes: int) -> Iterator[Cluster]:
    """A running cluster of ``nodes`` (1: on localhost; 2: in namespaces), every node idle, with
    ``SLURM_CONF`` pointing at it and no ``SLURM_*`` variables of an enclosing job; stopped (jobs
    cancelled, daemons and namespaces gone) and the environment restored on exit."""
    missing = missing_binaries(nodes)
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)}: `make sysdeps` installs slurm-wlm, munge and iproute2 "
                           "as root")
    if nodes > 1 and os.geteuid() != 0:
        raise RuntimeError("the two-node SLURM cluster needs root (network namespaces, veth pairs, bind mounts)")
    saved = {k: v for k, v in os.environ.items() if k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    for k in saved:
        del os.environ[k]
    cluster = start(d, nodes)
    try:
        yield cluster
    finally:
        cluster.stop()
        os.environ.pop("SLURM_CONF", None)
        os.environ.update(saved)


def start(d: Path, nodes: int) -> Cluster:
    """Start the cluster of ``running`` (sets ``SLURM_CONF``; the caller stops it)."""
    if nodes not in (1, 2):
        raise ValueError(f"nodes: 1 or 2, got {nodes}")
    (d / "state").mkdir()
    host = socket.gethostname().split(".")[0]  # `hostname -s`: slurmctld checks SlurmctldHost against it
    cluster = Cluster(d, d / "slurm.conf", {})
    try:
        if nodes == 1:
            ctld = (host, "127.0.0.1")
            cluster.nodes = {host: Node(host, "127.0.0.1")}  # slurmd finds its NodeName by `hostname -s`
        else:
            net = _private_subnet()
            hosts = list(net.hosts())
            ctld = (host, str(hosts[-1]))
            cluster.nodes = {f"node{i}": Node(f"node{i}", str(hosts[i - 1])) for i in (1, 2)}
            cluster.hosts_file = d / "hosts"
            cluster.hosts_file.write_text("127.0.0.1 localhost\n" + "".join(
                f"{n.addr} {n.name}\n" for n in cluster.nodes.values()) + f"{ctld[1]} {host}\n")
            _start_switch(cluster, ctld[1], net.prefixlen)
        sock = _start_munge(cluster)
        cluster.conf.write_text(slurm_conf(d, ctld, list(cluster.nodes.values()), 4 if nodes == 1 else 2, sock))
        os.environ["SLURM_CONF"] = str(cluster.conf)
        cluster.daemons.append(subprocess.Popen([which("slurmctld"), "-D", "-i", "-f", str(cluster.conf)],
                                                stdout=subprocess.DEVNULL, stderr=open(d / "slurmctld.err", "w"),
                                                start_new_session=True))
        for name in cluster.nodes:
            cluster.start_node(name)
        cluster.wait_state(list(cluster.nodes), ("idle",), timeout_s=60)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start_switch(cluster: Cluster, host_addr: str, prefixlen: int) -> None:
    cluster.switch = _namespace_holder(["--net"])
    _in(cluster.switch, "ip", "link", "add", "br0", "type", "bridge")
    _in(cluster.switch, "ip", "link", "set", "br0", "up")
    cluster.host_link = f"nemo{os.getpid() % 10**7}"  # unique among concurrent test runs on this host
    _run("ip", "link", "add", cluster.host_link, "type", "veth", "peer", "name", "to-host",
         "netns", str(cluster.switch.pid))
    _in(cluster.switch, "ip", "link", "set", "to-host", "master", "br0")
    _in(cluster.switch, "ip", "link", "set", "to-host", "up")
    _run("ip", "addr", "add", f"{host_addr}/{prefixlen}", "dev", cluster.host_link)
    _run("ip", "link", "set", cluster.host_link, "up")


def write_launcher_config(tmp_path: Path, pipeline: str, profiles: str = "") -> Path:
    """``tmp_path/launcher.yaml``: CPU jobs of this checkout's Python, output under ``tmp_path/out``,
    the stages of ``pipeline`` (YAML, indented here) and optional ``profiles`` (YAML as it is)."""
    cfg = tmp_path / "launcher.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        cluster:
          gpus_per_node: 0
          time: "00:05:00"
          python: {sys.executable}
          output_root: {tmp_path}/out
          workdir: {REPO}
          job_prefix: t
        pipeline:
        """) + textwrap.indent(textwrap.dedent(pipeline).rstrip() + "\n", "  ") + textwrap.dedent(profiles))
    return cfg


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.slurm_cluster DIR [--nodes 2]``: start a test cluster by hand (as root),
    print how to reach it, and run until interrupted (Ctrl-C or SIGTERM stops and removes it)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m tests.slurm_cluster", description=main.__doc__)
    p.add_argument("dir", type=Path, help="an empty or new directory for slurm.conf, state and logs")
    p.add_argument("--nodes", type=int, choices=(1, 2), default=2)
    a = p.parse_args(argv)
    a.dir.mkdir(parents=True, exist_ok=True)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started in the background (SIGINT ignored there)
        signal.signal(sig, interrupt)
    with running(a.dir.resolve(), a.nodes) as cluster:
        print(f"export SLURM_CONF={cluster.conf}    # then sinfo, sbatch, python -m nemo_ext.launch ...")
        for node in cluster.nodes.values():
            if node.holder is not None:
                print(f"{node.name} ({node.addr}): a shell there: nsenter -t {node.holder.pid} -n -u -m bash")
        print(f"logs: {cluster.dir}/*.log; Ctrl-C (or kill {os.getpid()}) stops the cluster", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
