"""``cellduality doctor``: a preflight of the cluster before ``snakemake --profile profiles/slurm --configfile=...``.

    cellduality doctor [--profile profiles/slurm] [--configfile config/paper.yaml [LAYER.yaml ...]]
                       [--snakefile Snakefile] [--partition NAME] [--sdm METHOD ...]
                       [--slurm-status-command CMD] [--target TARGET ...]

``--sdm`` and ``--slurm-status-command`` are what the run passes on the command line (they override the
profile, as they do for Snakemake); the requests of every target in ``--target`` are checked (default: all,
ablation and annotations, every target that submits jobs). One line per check (``ok`` / ``warn`` / ``FAIL`` and
what to do); exit status 1 if any check FAILs. It runs ``sacct``, ``sinfo`` and a Snakemake dry run; it never
submits a job and needs no network (README, "Preflight: cellduality doctor").
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import yaml
from packaging.version import Version

PLUGIN = "snakemake-executor-plugin-slurm"
MIN_PLUGIN = "2.7.1"  # pyproject.toml's pin: earlier versions could run GPU jobs twice
OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    message: str

    def line(self) -> str:
        return f"{self.status:<4} {self.name}: {self.message}"


class Node(NamedTuple):
    """What a SLURM node offers, or what a job asks for."""

    gpus: int
    mem_mb: int
    cpus: int

    def __str__(self) -> str:
        return f"{self.gpus} GPUs, {self.mem_mb} MB, {self.cpus} CPUs"


def run(cmd: list[str], timeout: float = 10) -> tuple[int, str, str]:
    """``(returncode, stdout, stderr)`` of a command; 127 when it is missing, 124 when it times out (never raises)."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except OSError as err:
        return 127, "", f"{cmd[0]}: {err.strerror or err}"
    except subprocess.TimeoutExpired:
        return 124, "", f"{cmd[0]} timed out after {timeout:g} s"
    return done.returncode, done.stdout, done.stderr


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _int(value: str | None) -> int:
    found = re.match(r"\d+", (value or "").strip("'\" "))
    return int(found.group()) if found else 0


def gres_gpus(gres: str) -> int:
    """GPUs in a gres string (sinfo ``%G`` or a ``gres`` resource): ``gpu:8``, ``gpu:a100:4(S:0-1)``,
    ``gpu:h100:8,shard:4``; ``(null)`` has none."""
    items = re.sub(r"\([^)]*\)", "", gres.strip("'\"")).split(",")
    return sum(_int(parts[-1]) for parts in (item.strip().split(":") for item in items)
               if parts[0] == "gpu" and len(parts) > 1)


def parse_sinfo(text: str) -> tuple[dict[str, list[Node]], str | None]:
    """``sinfo -h -N -o "%P %c %m %G"`` -> ``({partition: [nodes]}, default partition (marked *) or None)``."""
    partitions: dict[str, list[Node]] = {}
    default = None
    for fields in (line.split() for line in text.splitlines()):
        if len(fields) < 4:
            continue
        name = fields[0].rstrip("*")
        default = name if fields[0].endswith("*") else default
        partitions.setdefault(name, []).append(Node(gres_gpus(",".join(fields[3:])), _int(fields[2]), _int(fields[1])))
    return partitions, default


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("-inf")


def rule_resources(text: str) -> dict[str, dict[str, str]]:
    """``{rule: {resource: value}}`` from the job blocks of a Snakemake dry run's output (blocks without output,
    such as rule all, are skipped: nothing runs them); of a rule's several jobs, each resource keeps its largest."""
    found: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n(?=rule |localrule )", text):
        name = re.match(r"(?:local)?rule (\w+):", block)
        listed = re.search(r"resources: (.*)", block)
        if name and listed and re.search(r"^\s+output: ", block, re.M):
            resources = found.setdefault(name.group(1), {})
            for key, value in re.findall(r"(\w+)=(.*?)(?=, \w+=|$)", listed.group(1)):
                if key not in resources or _number(value) > _number(resources[key]):
                    resources[key] = value
    return found


def requested(resources: dict[str, str]) -> Node:
    """A job's request: ``gpu`` (rules/common.smk), ``gpus`` or a ``gres`` string; ``mem_mb``; ``cpus_per_task``."""
    gpus = max(_int(resources.get("gpu")), _int(resources.get("gpus")), gres_gpus(resources.get("gres", "")))
    return Node(gpus, _int(resources.get("mem_mb")), _int(resources.get("cpus_per_task")) or 1)


def local_rules(snakefile: Path) -> set[str]:
    """Rules named by ``localrules:`` in the Snakefile and the files it includes (they run on the submit host)."""
    text = snakefile.read_text()
    for name in re.findall(r"^include:\s*[\"'](.+?)[\"']", text, re.M):
        text += "\n" + (snakefile.parent / name).read_text()
    blocks = re.findall(r"^localrules:(.*?)(?=^\S)", text + "\n.", re.M | re.S)
    return {rule for block in blocks for rule in re.findall(r"\w+", re.sub(r"#.*", "", block))}


TARGETS = ("all", "ablation", "annotations")  # the targets that submit jobs (push_to_hub runs on the host)


def dry_run_resources(snakefile: Path, profile: Path, *configfiles: Path,
                      targets: tuple[str, ...] = TARGETS) -> dict[str, dict[str, str]]:
    """Each rule's resources in a dry run of ``targets`` with the profile, from an empty working directory (so
    every job is planned); ``--sdm env-modules`` so that it needs no conda. Raises RuntimeError with its last
    error line."""
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, "-m", "snakemake", *targets, "-s", str(snakefile.resolve()), "-d", workdir, "-n",
               "--profile", str(profile.resolve()), "--sdm", "env-modules"]
        cmd += ["--configfile", *(str(path.resolve()) for path in configfiles)] if configfiles else []
        rc, out, err = run(cmd, timeout=600)
    if rc != 0:
        raise RuntimeError(next((line for line in reversed(err.splitlines()) if line.strip()), f"exit status {rc}"))
    return rule_resources(out + err)


def check_plugin() -> Check:
    fix = f'pip install "{PLUGIN}>={MIN_PLUGIN}"'
    try:
        version = metadata.version(PLUGIN)
    except metadata.PackageNotFoundError:
        return Check("executor plugin", FAIL, f"{PLUGIN} is not installed: {fix}")
    if Version(version) < Version(MIN_PLUGIN):
        return Check("executor plugin", FAIL, f"{PLUGIN} {version} is older than {MIN_PLUGIN} (GPU jobs could run "
                                              f"twice): {fix}")
    return Check("executor plugin", OK, f"{PLUGIN} {version}")


def check_accounting(profile: Path, settings: dict) -> Check:
    if settings.get("slurm-status-command") == "squeue":
        return Check("accounting", OK, "job status is queried with squeue (keep MinJobAge >= 600)")
    rc, out, err = run(["sacct", "--version"])
    if rc == 0:
        version = first_line(out)
        rc, out, err = run(["sacct", "-n", "-X", "-j", "1", "--format=JobID"])
    if rc == 0:
        return Check("accounting", OK, f"sacct works ({version})")
    return Check("accounting", WARN, f"sacct does not work here ({first_line(err or out) or f'exit status {rc}'}); "
                                     "add `--slurm-status-command squeue` (or uncomment `slurm-status-command: squeue`"
                                     f" in {profile / 'config.yaml'}) or jobs will hang after they finish")


def check_deployment(settings: dict) -> Check:
    methods = settings.get("software-deployment-method") or settings.get("sdm") or []
    methods = methods.split() if isinstance(methods, str) else list(methods)
    tools = {"conda": [settings.get("conda-frontend", "conda")], "apptainer": ["apptainer", "singularity"]}
    missing = [m for m in methods if m in tools and not any(shutil.which(tool) for tool in tools[m])]
    if missing:
        return Check("deployment", FAIL, f"the software-deployment-method is {' '.join(methods)} but "
                                         f"{' / '.join(t for m in missing for t in tools[m])} is not on PATH: load it, "
                                         "or add `--sdm env-modules` (no rule declares modules, so jobs run in the "
                                         "submitting environment) after pip install -e \".[test]\" or the packages "
                                         "of envs/*.yaml into that environment")
    return Check("deployment", OK, f"software-deployment-method {' '.join(methods) or 'none (current environment)'}")


def check_requests(resources: dict[str, dict[str, str]], partitions: dict[str, list[Node]], default: str | None,
                   partition: str | None = None, local: set[str] = frozenset()) -> list[Check]:
    """A FAIL per rule whose request fits no node of its partition (``--partition``, else its slurm_partition,
    else the cluster's default) and per unknown partition; a warn per partition without GPUs that GPU rules use."""
    checks, unknown, gpu_less, largest = [], {}, {}, {}
    for rule, res in sorted(resources.items()):
        if rule in local:
            continue
        name = partition or res.get("slurm_partition", "").strip("'\"") or default
        if name not in partitions:
            unknown.setdefault(name, []).append(rule)
            continue
        want, nodes = requested(res), partitions[name]
        most = Node(*map(max, zip(*nodes)))
        if want.gpus and not most.gpus:
            gpu_less.setdefault(name, []).append(rule)  # the warn below, not a FAIL per rule
        largest[name] = Node(*map(max, zip(largest.get(name, want), want)))
        if not any(n.cpus >= want.cpus and n.mem_mb >= want.mem_mb and n.gpus >= want.gpus * bool(most.gpus)
                   for n in nodes):
            checks.append(Check("requests", FAIL, f"rule {rule} asks {want}; nodes of partition {name} have at most "
                                                  f"{most}: lower training.gpus / mem_mb / cpus_per_task in the "
                                                  "config or use another partition (--partition, slurm_partition)"))
    checks += [Check("requests", FAIL, f"rules {', '.join(rules)} would go to "
                                       f"{f'partition {name}, which' if name else 'the default partition, which'} "
                                       f"sinfo does not list ({', '.join(partitions)}): pass --partition or set "
                                       "slurm_partition in the profile's default-resources")
               for name, rules in unknown.items()]
    with_gpus = ", ".join(p for p, nodes in partitions.items() if any(n.gpus for n in nodes)) or "none"
    checks += [Check("GPU partition", WARN, f"rules {', '.join(rules)} ask for GPUs but partition {name} has none "
                                            f"(partitions with GPUs: {with_gpus}): set slurm_partition for them "
                                            "(set-resources in the profile) or pass --partition")
               for name, rules in gpu_less.items()]
    if not checks:
        checks.append(Check("requests", OK, "; ".join(f"partition {p} has a node for every request (largest: {n})"
                                                         for p, n in largest.items())))
    return checks


def doctor(profile: Path, configfiles: list[Path], snakefile: Path, partition: str | None = None,
           overrides: dict | None = None, targets: tuple[str, ...] = TARGETS) -> list[Check]:
    """The checks; ``overrides`` (``sdm``, ``slurm-status-command``) are the run's command-line settings, laid
    over the profile's as Snakemake lays them."""
    settings_file = profile / "config.yaml"
    if not settings_file.is_file():
        return [Check("profile", FAIL, f"{settings_file} not found: pass --profile DIR (the folder of its config.yaml)")]
    settings = yaml.safe_load(settings_file.read_text()) or {}
    for key, value in (overrides or {}).items():
        if value:
            if key == "sdm":
                settings.pop("software-deployment-method", None)
            settings[key] = value
    checks = [check_plugin(), check_accounting(profile, settings), check_deployment(settings)]
    rc, out, err = run(["sinfo", "-h", "-N", "-o", "%P %c %m %G"])
    if rc != 0:
        reason = "not on a SLURM submit host" if rc == 127 else f"sinfo failed ({first_line(err) or rc})"
        return [*checks, Check("requests", WARN, f"{reason}; request check skipped")]
    partitions, default = parse_sinfo(out)
    try:
        resources = dry_run_resources(snakefile, profile, *configfiles, targets=targets)
    except RuntimeError as err:
        return [*checks, Check("requests", FAIL, f"the dry run of {' '.join(targets)} failed: {err}")]
    return checks + check_requests(resources, partitions, default, partition, local_rules(snakefile))


def main(argv: list[str] | None = None) -> int:
    """``cellduality doctor ...``: print the checks; 1 if any FAILs, else 0."""
    parser = argparse.ArgumentParser(prog="cellduality doctor", description="Check this host and the SLURM cluster "
                                     "before `snakemake --profile profiles/slurm`; submits nothing.")
    parser.add_argument("--profile", type=Path, default=Path("profiles/slurm"), help="Snakemake profile folder")
    parser.add_argument("--configfile", type=Path, nargs="+", default=[],
                        help="the run's config file(s), as for snakemake (default: config/config.yaml)")
    parser.add_argument("--snakefile", type=Path, default=Path("Snakefile"))
    parser.add_argument("--partition", help="check requests against this partition (default: the profile's "
                                            "slurm_partition, else the cluster's default)")
    parser.add_argument("--sdm", "--software-deployment-method", nargs="+", default=[],
                        help="the run's --sdm (overrides the profile's software-deployment-method)")
    parser.add_argument("--slurm-status-command", help="the run's --slurm-status-command (e.g. squeue)")
    parser.add_argument("--target", nargs="+", default=list(TARGETS),
                        help=f"targets whose jobs are checked (default: {' '.join(TARGETS)})")
    args = parser.parse_args(argv)
    checks = doctor(args.profile, args.configfile, args.snakefile, args.partition,
                    overrides={"sdm": args.sdm, "slurm-status-command": args.slurm_status_command},
                    targets=tuple(args.target))
    print("\n".join(check.line() for check in checks), flush=True)
    return int(any(check.status == FAIL for check in checks))
