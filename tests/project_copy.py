"""A temporary copy of the project in which the whole pipeline can run (end-to-end, DVC and SLURM tests).

The copy holds what the DAG needs, as shipped: ``Snakefile``, ``workflow/``, ``params/``, ``amflow/`` (the
code, and a DVC dep of every stage), ``dvc.yaml``, ``pyproject.toml``, ``.gitignore``, ``.dvcignore`` and
``.dvc/config`` when the project has one. ``data/`` and ``results/`` start empty. Tests make runs cheap
the way a user would: ``--configfile params/tiny.yaml`` (:data:`TINY`), ``--config`` overrides, or a
params file that extends a shipped one (for DVC, with ``amflow dvc-yaml --params FILE``).

Commands run in the copy import the copy's ``amflow`` (``PYTHONPATH``), never the checkout's, and may
write byte code next to it (``PYTHONDONTWRITEBYTECODE`` is cleared), as on a user's machine: a
``__pycache__`` inside ``amflow/`` must not change DVC's view of the ``amflow`` dep.

:func:`shared_pipeline_run` runs ``snakemake --cores 2 report --configfile params/tiny.yaml`` once per
test session and hands the same copy to every module that asks (end-to-end checks, the DVC
checks and the SLURM test), so the suite pays for one full pipeline run.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COPIED = ("Snakefile", "profiles", "workflow", "params", "amflow", "dvc.yaml", "pyproject.toml", ".gitignore", ".dvcignore")
# The shipped tiny configuration, as a user gives it to Snakemake (targets first: --configfile takes
# every word that follows it).
TINY = ("--configfile", "params/tiny.yaml")
TINY_RESULTS = "results/tiny"
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
# A whole tiny pipeline takes a few minutes on 2 idle cores, and 30 or more when the machine is shared
# (load 8 to 12: a 1-second training is a 2-minute job); the limit only catches a hang.
PIPELINE_TIMEOUT_S = 3600


def project_env(project: Path, **extra: str) -> dict:
    """Environment for commands run in ``project``: the venv's tools first on PATH, no hub access, an
    MLflow store inside the copy, the copy's package importable, no stray Snakemake profile."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(project)
    env["HF_HUB_OFFLINE"] = "1"
    env["MPLBACKEND"] = "Agg"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    for name in ("PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "SNAKEMAKE_PROFILE", "AMFLOW_TRACKING"):
        env.pop(name, None)
    env.update(extra)
    return env


def run(cmd: list, project: Path, *, check: bool = True, timeout: float = PIPELINE_TIMEOUT_S,
        env: Optional[dict] = None):
    """Run ``cmd`` in ``project``; on failure, raise with the tail of its output (the test's message)."""
    out = subprocess.run([str(c) for c in cmd], cwd=project, env=env or project_env(project),
                         capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {out.returncode}\n--- stdout\n"
                             f"{out.stdout[-4000:]}\n--- stderr\n{out.stderr[-8000:]}")
    return out


def make_project_copy(dest: Path, dvc_params: Optional[str] = None) -> Path:
    """Copy the project into ``dest``; with ``dvc_params``, regenerate dvc.yaml there for that params
    file (``amflow dvc-yaml --params FILE``, as docs/dvc.md tells a user)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=IGNORE)
        elif src.exists():
            shutil.copy2(src, dest / name)
    for name in (".dvc/config", ".dvc/.gitignore"):  # a committed `dvc init`, if the project has one
        if (ROOT / name).is_file():
            (dest / ".dvc").mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    if dvc_params is not None:
        run([BIN / "amflow", "dvc-yaml", "--params", dvc_params], dest)
    assert (dest / "dvc.yaml").is_file()
    return dest


def copy_of(project: Path, dest: Path) -> Path:
    """A copy of a project that has run, modification times kept (Snakemake compares them)."""
    shutil.copytree(project, dest, symlinks=True)
    return dest


def snakemake(project: Path, *args: str, check: bool = True, timeout: float = PIPELINE_TIMEOUT_S,
              env: Optional[dict] = None):
    return run([BIN / "snakemake", *args], project, check=check, timeout=timeout, env=env)


def job_counts(out) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake dry run: rule -> number of jobs (and 'total')."""
    lines = (out.stdout + out.stderr).splitlines()
    start = lines.index("Job stats:") + 3  # past the header and its rule of dashes
    counts = {}
    for line in lines[start:]:
        if not line.strip():
            break
        name, count = line.split()
        counts[name] = int(count)
    return counts


def nothing_to_do(out) -> bool:
    """Snakemake's dry-run verdict when every target is up to date."""
    return "Nothing to be done" in out.stdout + out.stderr


_SHARED: dict[str, Path] = {}


def shared_pipeline_run(tmp_path_factory) -> Path:
    """One project copy in which ``snakemake --cores 2 report --configfile params/tiny.yaml`` ran (the
    README's form: the rule name as the target), once per session."""
    if "error" in _SHARED:  # failed once: do not pay for it again in the next module
        raise AssertionError(f"the shared pipeline run failed earlier:\n{_SHARED['error']}")
    if "report" not in _SHARED:
        project = make_project_copy(tmp_path_factory.mktemp("e2e") / "project")
        try:
            snakemake(project, "--cores", "2", "report", *TINY)
        except (AssertionError, subprocess.TimeoutExpired) as exc:
            _SHARED["error"] = str(exc)
            raise
        _SHARED["report"] = project
    return _SHARED["report"]
