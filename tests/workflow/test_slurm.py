"""The SLURM profile (workflow/profiles/slurm) against a real single-node SLURM started by the test.

Debian's slurm-wlm packages (``slurmctld``, ``slurmd``, ``slurm-client``, ``munge``; .ci/run installs
them) run here as a one-node cluster configured in a temporary folder: munged with its own key and
socket, slurmctld and slurmd on free local ports, partitions ``cpu`` and ``gpu`` (the profile's), and a
node that declares 64 CPUs, 500 GB and 4 GPUs (``SlurmdParameters=config_overrides``; the GPUs are
empty files) so that the profile's requests are accepted as written. The daemons run as root (slurmd
must, to start job steps): the test is skipped when not root or when the packages are missing.

What the test adds to the shipped profile, and why (none of it belongs in the profile itself):

- ``--slurm-status-command squeue``: no slurmdbd here, so ``sacct`` answers "accounting storage is
  disabled"; ``MinJobAge=600`` keeps finished jobs visible to ``squeue``.
- ``--slurm-no-account``: no accounting database, hence no accounts.
- ``--slurm-init-seconds-before-status-checks 1``: the plugin's default waits 40 s before it first asks.
- an ``srun`` wrapper first on PATH that sets ``SLURM_CONF``: the jobstep plugin removes every
  ``SLURM_*`` variable (``SLURM_CONF`` included) before it calls ``srun`` inside the job; a real
  cluster has its configuration at the default path (or configless), this test cannot write /etc.

Checks: a dry run with the profile gives each rule the profile's resources (partition, memory, runtime,
CPUs, GPUs, threads) and the train jobs ``torchrun --nproc_per_node 4`` (gpu: 4); then a real run of one
training and its evaluation through sbatch: SLURM received those resources (``scontrol show job``) and
training ran 4 processes (``world_size`` in train.json).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from project_copy import ROOT, copy_of, make_project_copy, project_env, shared_pipeline_run, snakemake

pytestmark = pytest.mark.slow

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo", "srun")
TEST_FLAGS = ("--slurm-status-command", "squeue", "--slurm-no-account",
              "--slurm-init-seconds-before-status-checks", "1")
PROFILE = yaml.safe_load((ROOT / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
RUN = "results/tiny/synth_moving/frame/seed0"  # in the shared run (--configfile params/tiny.yaml)


def _which(name: str):
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name)
                                       if p.exists()), None)


def _missing() -> list[str]:
    return [n for n in DAEMONS + CLIENTS if not _which(n)]


if _missing():
    pytest.skip(f"SLURM is not installed ({', '.join(_missing())} missing): apt-get install slurmctld slurmd "
                f"slurm-client munge (.ci/run does)", allow_module_level=True)
if os.geteuid() != 0:
    pytest.skip("a local SLURM needs root (slurmd starts the job steps)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for p in reversed(procs):
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("slurm")
    d.chmod(0o755)
    for sub in ("state", "spool", "log", "dev", "bin"):
        (d / sub).mkdir()
    key = d / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    node = socket.gethostname().split(".")[0]  # slurmctld only runs on the host named SlurmctldHost
    gpus = [d / "dev" / f"gpu{i}" for i in range(4)]
    for g in gpus:
        g.touch()
    conf = d / "slurm.conf"
    conf.write_text(f"""\
ClusterName=amflowtest
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.socket
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
MpiDefault=none
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs=64 RealMemory=512000 Gres=gpu:4 State=UNKNOWN
PartitionName=cpu Nodes={node} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={node} MaxTime=INFINITE State=UP
""")
    (d / "gres.conf").write_text(f"NodeName={node} Name=gpu File={d}/dev/gpu[0-3]\n")
    srun = d / "bin" / "srun"
    srun.write_text(f"#!/bin/sh\nSLURM_CONF={conf} exec {_which('srun')} \"$@\"\n")
    srun.chmod(0o755)

    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs: list[subprocess.Popen] = []
    logs = open(d / "log" / "daemons.out", "w")
    try:
        procs.append(subprocess.Popen(
            [_which("munged"), "-F", "--force", f"--socket={d}/munge.socket", f"--key-file={key}",
             f"--log-file={d}/log/munged.log", f"--pid-file={d}/munged.pid", f"--seed-file={d}/munged.seed"],
            stdout=logs, stderr=logs))
        _wait(lambda: (d / "munge.socket").exists(), "munged", d)
        procs.append(subprocess.Popen([_which("slurmctld"), "-D", "-c", "-f", str(conf)], env=env, stdout=logs,
                                      stderr=logs))
        procs.append(subprocess.Popen([_which("slurmd"), "-D", "-N", node, "-f", str(conf)], env=env, stdout=logs,
                                      stderr=logs))

        def idle():
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True)
            return out.returncode == 0 and out.stdout.split() and all(s == "idle" for s in out.stdout.split())

        _wait(idle, "the SLURM node to become idle", d, timeout=60)
        yield {"dir": d, "env": {"SLURM_CONF": str(conf), "PATH": f"{d / 'bin'}{os.pathsep}"}}
    finally:
        _stop(procs)
        logs.close()


def _wait(ok, what: str, d: Path, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ok():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((d / "log").glob("*")) if p.is_file())
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def cluster_env(project: Path, cluster) -> dict:
    env = project_env(project)
    env["SLURM_CONF"] = cluster["env"]["SLURM_CONF"]
    env["PATH"] = cluster["env"]["PATH"] + env["PATH"]
    return env


def expected_resources(rule: str) -> dict:
    res = dict(PROFILE["default-resources"])
    res.update(PROFILE.get("set-resources", {}).get(rule, {}))
    return res


def job_blocks(text: str) -> list[tuple[str, dict, str, int]]:
    """(rule, resources, shell command, threads) of each job a dry run lists."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", text):
        m = re.match(r"(?:local)?rule (\w+):\n", block)
        if not m:
            continue
        res = re.search(r"^\s+resources: (.+)$", block, flags=re.M)
        resources = dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {}
        shell = re.search(r"^Shell command: (.+)$", block, flags=re.M)
        threads = re.search(r"^\s+threads: (\d+)$", block, flags=re.M)
        jobs.append((m.group(1), resources, shell.group(1) if shell else "", int(threads.group(1)) if threads else 1))
    return jobs


def test_profile_gives_each_rule_its_resources(cluster, tmp_path):
    project = make_project_copy(tmp_path / "project")
    out = snakemake(project, "--profile", "workflow/profiles/slurm", *TEST_FLAGS, "-n", "-F", "results/default/report.md",
                    env=cluster_env(project, cluster))
    jobs = job_blocks(out.stdout + out.stderr)
    rules = {rule for rule, *_ in jobs}
    assert {"prepare_dataset", "extract_frames", "camera_motion", "pretrain_backbone", "train", "evaluate",
            "train_ablation", "evaluate_ablation", "table1", "report"} <= rules, sorted(rules)
    for rule, resources, shell, threads in jobs:
        want = expected_resources(rule)
        for key in ("slurm_partition", "mem_mb", "runtime", "cpus_per_task"):
            assert resources.get(key) == str(want[key]), (rule, key, resources.get(key), want[key])
        assert resources.get("gpu", "0") == str(want.get("gpu", 0)), (rule, resources)
        assert resources.get("nodes") == (str(want["nodes"]) if "nodes" in want else None), (rule, resources)
        if rule in PROFILE.get("set-threads", {}):
            assert threads == PROFILE["set-threads"][rule], (rule, threads)
        assert threads <= PROFILE["max-threads"], (rule, threads)
        # the login node's cores do not cap a cluster run: each job holds its threads' slots
        assert resources["cpu_slots"] == str(threads), (rule, resources)
        assert threads <= int(resources["cpus_per_task"]), (rule, threads, resources["cpus_per_task"])
        if rule in ("train", "train_ablation"):
            assert shell.startswith("torchrun --standalone --nproc_per_node 4 -m amflow.cli train "), shell
        elif shell:
            assert shell.startswith("amflow "), shell


def _minutes(limit: str) -> int:
    days, _, hms = limit.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return int(days or 0) * 1440 + h * 60 + m + (1 if s else 0)


def _megabytes(mem: str) -> float:
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    return float(mem[:-1]) * units[mem[-1]] if mem[-1] in units else float(mem)


def test_training_runs_through_sbatch_with_the_profiles_resources(cluster, tmp_path_factory):
    project = copy_of(shared_pipeline_run(tmp_path_factory), tmp_path_factory.mktemp("slurm_run") / "project")
    shutil.rmtree(project / RUN)  # the one run to redo: train (gpu: 4, torchrun) then evaluate (gpu: 1)
    env = cluster_env(project, cluster)
    out = snakemake(project, "--profile", "workflow/profiles/slurm", *TEST_FLAGS, f"{RUN}/metrics.json",
                    "--configfile", "params/tiny.yaml", env=env, timeout=600)
    text = out.stdout + out.stderr
    submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*?/rule_(\w+?)/", text)
    assert sorted(rule for _, rule in submitted) == ["evaluate", "train"], text[-4000:]
    assert "torchrun --standalone --nproc_per_node 4 -m amflow.cli train" in text
    for jobid, rule in submitted:
        show = subprocess.run(["scontrol", "show", "job", "-o", jobid], env=env, capture_output=True, text=True,
                              check=True).stdout
        fields = dict(tok.split("=", 1) for tok in show.split() if "=" in tok)
        want = expected_resources(rule)
        assert fields["JobState"] == "COMPLETED", (rule, fields["JobState"])
        assert fields["Partition"] == want["slurm_partition"], (rule, fields["Partition"])
        assert int(fields["NumCPUs"]) == want["cpus_per_task"], (rule, fields["NumCPUs"])
        assert _megabytes(fields["MinMemoryNode"]) == want["mem_mb"], (rule, fields["MinMemoryNode"])
        assert _minutes(fields["TimeLimit"]) == want["runtime"], (rule, fields["TimeLimit"])
        gres = fields.get("TresPerJob", "") + fields.get("TresPerNode", "")
        assert re.search(rf"gpu[:=]{want['gpu']}\b", gres), (rule, gres)
        assert fields["NumNodes"].split("-")[0] == "1", (rule, fields["NumNodes"])  # torchrun --standalone: one node
    train = json.loads((project / RUN / "train.json").read_text())
    assert train["world_size"] == 4 and train["status"] == "complete"
    assert (project / RUN / "metrics.json").is_file()
