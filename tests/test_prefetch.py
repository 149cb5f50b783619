"""`snakemake prefetch` (workflow/rules/prefetch.smk): it holds exactly the jobs that need the network, the paper
config's dry run after a prefetch against a fake hub schedules none of them, and (slow) the smoke workflow after a
prefetch runs in a network namespace with no network at all, with the hub libraries switched offline."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from fake_hub import FakeHub, FakeRepo

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
SMOKE = "workflow/config/smoke.yaml"
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
# What a test must not inherit from the shell that runs it: offline switches, tokens, another hub.
SCRUBBED = (*OFFLINE_VARS, "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT")
# The rules of the paper config that download or install (the smoke config only builds environments).
PAPER_NETWORK_RULES = {"fetch", "fetch_dataset", "fetch_coco", "fetch_clip", "scorer_weights", "scorer_env",
                       "geneval_env", "geneval_metadata", "geneval_fetch_models"}
SMOKE_NETWORK_RULES = {"scorer_env", "geneval_env"}
# The paper config's prefetch jobs that this test runs against the fake hub; the others are touched (see below).
SERVED_RULES = {"fetch", "fetch_dataset", "fetch_clip"}


@dataclass(frozen=True)
class Job:
    """One job of a dry run (``snakemake -n -p``)."""

    rule: str
    output: str
    resources: str
    command: str

    @property
    def needs_network(self) -> bool:
        """A download (the workflow marks each with ``hub=1``, which the profile serialises) or a pip install of a
        separate environment (``sidrepro env``)."""
        return bool(re.search(r"\bhub=[1-9]", self.resources)) or "sidrepro env " in self.command


_JOB = re.compile(r"^(?:local)?rule (\S+):\n((?:    .*\n)+)(?:Shell command: (.*)\n)?", re.MULTILINE)


def dry_run_jobs(output: str) -> list[Job]:
    """Every job block of a dry run's output."""
    jobs = []
    for m in _JOB.finditer(output):
        fields = dict(line.strip().split(": ", 1) for line in m.group(2).splitlines() if ": " in line)
        jobs.append(Job(m.group(1), fields.get("output", ""), fields.get("resources", ""), m.group(3) or ""))
    return jobs


def clean_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in SCRUBBED}, "OMP_NUM_THREADS": "1", **extra}


def snakemake(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None, timeout: int = 300,
              prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, SNAKEMAKE, *args], cwd=cwd, env=env or clean_env(), capture_output=True,
                          text=True, timeout=timeout)


def copy_workflow(folder: Path) -> None:
    shutil.copy(REPO / "Snakefile", folder / "Snakefile")
    shutil.copytree(REPO / "workflow", folder / "workflow")


# ------------------------------------------------------------------------------------ what prefetch holds

@pytest.mark.parametrize(("configfile", "rules"), [(None, PAPER_NETWORK_RULES), (SMOKE, SMOKE_NETWORK_RULES)],
                         ids=["paper", "smoke"])
def test_prefetch_holds_exactly_the_jobs_that_need_the_network(configfile, rules):
    """Every job of every target of the workflow that downloads or installs is a prefetch job, and prefetch holds
    nothing else: a new download rule left out of prefetch (or an offline one put in) fails here."""
    config = [f"--configfile={configfile}"] if configfile else []
    listed = snakemake("--list-target-rules", "--nolock", *config)
    assert listed.returncode == 0, listed.stderr[-3000:]
    targets = listed.stdout.split()
    everything = snakemake("-n", "-p", "--forceall", "--nolock", *config, *targets)
    assert everything.returncode == 0, everything.stderr[-3000:]
    network = {j for j in dry_run_jobs(everything.stdout) if j.needs_network}

    prefetch = snakemake("-n", "-p", "--forceall", "--nolock", *config, "prefetch")
    assert prefetch.returncode == 0, prefetch.stderr[-3000:]
    jobs = {j for j in dry_run_jobs(prefetch.stdout) if j.rule != "prefetch"}
    assert jobs == network, (sorted(j.output for j in jobs - network), sorted(j.output for j in network - jobs))
    assert {j.rule for j in jobs} == rules
    print(*sorted(f"{j.rule}: {j.output}" for j in jobs), sep="\n")


# ------------------------------------------------------------------------------- paper config, fake hub

def _shard(captions: list[str]) -> bytes:
    """A parquet shard in the midjourney-v6-llava layout (llava captions, image bytes never decoded here)."""
    table = pa.table({"llava": pa.array(captions, pa.string()),
                      "image": pa.array([b"\x89PNG\r\n\x1a\n"] * len(captions), pa.binary())})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _paper_repos(cfg: dict) -> dict[str, FakeRepo]:
    """A tiny stand-in for every hub repo the paper config fetches: teachers, baselines and LoRAs, the dataset and
    the paper protocol's CLIP weights."""
    from sidrepro.data.clip_weights import clip_hub_files
    from sidrepro.evaluate.protocols import get_protocol
    from sidrepro.teachers.registry import BASELINES, TEACHERS

    pipeline = {"model_index.json": b"{}", "scheduler/scheduler_config.json": b"{}",
                "transformer/config.json": b"{}", "transformer/diffusion_pytorch_model.safetensors": b"\0" * 64}
    repos = {}
    for name in [*cfg["teachers"], *cfg["baselines"]]:
        entry = TEACHERS.get(name) or BASELINES[name]
        repos[entry.hub_id] = FakeRepo(dict(pipeline))
        if getattr(entry, "lora_id", ""):
            weights = entry.lora_weight_name or "pytorch_lora_weights.safetensors"
            repos[entry.lora_id] = FakeRepo({weights: b"\0" * 64, "README.md": b"lora"})
    dataset = cfg["data"]["shards"]["dataset"]
    repos[f"datasets/{dataset}"] = FakeRepo({"data/train_000.parquet": _shard(["a red cube", "two cats asleep"])})
    protocol = get_protocol(cfg["evaluate"]["protocol"])
    clip_repo, names = clip_hub_files(protocol.clip_model, protocol.clip_pretrained)
    repos[clip_repo] = FakeRepo({names[0]: b"\1" * 64})
    return repos


@pytest.mark.slow
def test_paper_dry_run_after_prefetch_schedules_no_download(tmp_path):
    """The paper config's prefetch: the hub downloads (18 snapshots, the dataset, the CLIP weights) run through their
    rules against a fake hub on 127.0.0.1; the downloads a fake cannot serve (COCO from images.cocodataset.org,
    GenEval's metadata and detector from GitHub and OpenMMLab with pinned sha256, the official scorer weights at
    pinned commits) and the environment builds (about 20 minutes for GenEval's) are touched. Then the tables' dry run
    schedules no download or environment job, and prefetch has nothing left to do."""
    copy_workflow(tmp_path)
    cfg = yaml.safe_load((REPO / "workflow/config/paper.yaml").read_text(encoding="utf-8"))
    planned = snakemake("-n", "-p", "prefetch", cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr[-3000:]
    jobs = [j for j in dry_run_jobs(planned.stdout) if j.rule != "prefetch"]
    assert {j.rule for j in jobs} == PAPER_NETWORK_RULES

    served = [j.output for j in jobs if j.rule in SERVED_RULES]
    repos = _paper_repos(cfg)
    env = clean_env(HF_HOME=str(tmp_path / "hf-home"), NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    with FakeHub(repos) as hub:
        env["HF_ENDPOINT"] = hub.url
        fetched = snakemake("--cores", "1", *served, cwd=tmp_path, env=env, timeout=600)
        asked = {"/".join(p.split("/")[3:5]) for p in hub.paths("GET") if p.startswith("/api/")}
    assert fetched.returncode == 0, fetched.stdout[-3000:] + fetched.stderr[-3000:]
    assert {r.removeprefix("datasets/") for r in repos} <= asked  # every repo came from the fake hub
    assert (tmp_path / "snapshots/black-forest-labs--FLUX.1-dev/transformer/config.json").is_file()

    # Environments first: GenEval's detector job takes the environment's stamp as input, so it must be older.
    touched = sorted((j for j in jobs if j.rule not in SERVED_RULES), key=lambda j: not j.rule.endswith("_env"))
    for k, job in enumerate(touched):
        path = tmp_path / job.output
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path, (time.time() + k, time.time() + k))

    again = snakemake("-n", "prefetch", cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]
    tables = snakemake("-n", "results/table1.csv", "results/table2.csv", cwd=tmp_path)
    assert tables.returncode == 0, tables.stderr[-3000:]
    rules = {j.rule for j in dry_run_jobs(tables.stdout)}
    print("Job stats:" + tables.stdout.rsplit("Job stats:", 1)[1].split("\n\n", 1)[0])
    assert not rules & PAPER_NETWORK_RULES, rules & PAPER_NETWORK_RULES
    assert {"coco_reference", "prompts_from_shards", "distill", "sample", "evaluate", "score", "table"} <= rules


# --------------------------------------------------------------------------- smoke, network namespace

def _network_namespace_or_skip() -> tuple[str, ...]:
    """The command prefix that runs a command in a new network namespace with only its loopback up (as on any
    node, but nothing beyond it); skips where one cannot be made."""
    if os.geteuid() != 0:
        pytest.skip("needs root for `unshare --net` (a network namespace without network)")
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs `{tool}` to make a network namespace without network")
    prefix = ("unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh")
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {probe.stderr.strip()}")
    return prefix


@pytest.fixture(scope="session")
def hpsv2_env():
    """The hpsv2 scorer environment, built where the workflow keeps it (the first time on a machine: about a minute,
    linking torch from the main environment; afterwards reused), so that the timed run does not include pip."""
    from sidrepro.envs import EnvError, ensure_env, env_dir_for

    spec = REPO / "workflow" / "envs" / "hpsv2.txt"
    try:
        ensure_env(spec, env_dir_for(spec))
    except EnvError as exc:
        pytest.skip(f"the hpsv2 environment cannot be built here: {exc}")


PROBE_RULE = """

rule offline_probe:
    output:
        "probe/{name}.env",
    shell:
        "env | grep -E '^(HF_HUB_OFFLINE|TRANSFORMERS_OFFLINE|HF_DATASETS_OFFLINE)=' | sort > {output} || true"
"""


@pytest.mark.slow
def test_smoke_runs_with_no_network_after_prefetch(tmp_path, hpsv2_env):
    """One tiny teacher (data-free, one shard, no baselines) to table 1, plus its HPSv2 score, which runs in the
    hpsv2 scorer's own environment: `snakemake prefetch` builds that environment (reused from the cache), then the
    whole run happens in a network namespace where nothing outside the loopback can be reached, every job with the
    hub libraries offline. GenEval is left out: its environment compiles mmcv-full for about 20 minutes the first
    time on a machine; its rules' place in prefetch is checked by the dry runs above."""
    prefix = _network_namespace_or_skip()
    copy_workflow(tmp_path)
    with (tmp_path / "Snakefile").open("a", encoding="utf-8") as handle:
        handle.write(PROBE_RULE)  # a job that reports the hub libraries' offline switches it was given
    cfg = yaml.safe_load((REPO / SMOKE).read_text(encoding="utf-8"))
    cfg["teachers"] = {"tiny-sana": {**cfg["teachers"]["tiny-sana"], "settings": ["data-free"], "teacher_row": False}}
    cfg.pop("sweep", None)  # the smoke sweep varies tiny-sd3, which this run leaves out
    cfg["baselines"] = {}
    cfg["sample"]["num_shards"] = 1
    cfg["tables"]["scores"] = []
    cfg.pop("geneval")
    cfg["scores"]["scorers"] = ["hpsv2"]
    (tmp_path / "offline.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    config = "--configfile=offline.yaml"

    before = snakemake("--cores", "1", config, "probe/before.env", cwd=tmp_path)
    assert before.returncode == 0, before.stderr[-3000:]
    assert (tmp_path / "probe/before.env").read_text() == ""  # prefetch not done: the hub stays reachable

    prefetch = snakemake("--cores", "2", config, "prefetch", cwd=tmp_path, timeout=600)
    assert prefetch.returncode == 0, prefetch.stdout[-3000:] + prefetch.stderr[-3000:]
    assert {j.rule for j in dry_run_jobs(prefetch.stderr)} == {"scorer_env", "prefetch"}  # a run logs to stderr

    # The namespace really has no network: an outside address is unreachable at once.
    outside = subprocess.run([*prefix, sys.executable, "-c", "import socket; socket.create_connection(('1.1.1.1', "
                              "443), timeout=5)"], capture_output=True, text=True)
    assert outside.returncode != 0 and "unreachable" in outside.stderr, outside.stderr

    score = "work/smoke/scores/tiny-sana--data-free/hpsv2.json"
    start = time.monotonic()
    run = snakemake("--cores", "2", config, "results/table1.csv", score, "probe/after.env", cwd=tmp_path,
                    timeout=900, prefix=prefix)
    elapsed = time.monotonic() - start
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    print(f"smoke run with no network: {elapsed:.0f} s")

    ran = {j.rule for j in dry_run_jobs(run.stderr)}
    assert not ran & SMOKE_NETWORK_RULES and {"zoo", "distill", "evaluate", "scorer_weights", "score"} <= ran, ran
    rows = (tmp_path / "results/table1.csv").read_text(encoding="utf-8")
    assert "tiny-sana--data-free" in rows and (tmp_path / score).is_file()
    assert (tmp_path / "probe/after.env").read_text().split() == sorted(f"{k}=1" for k in OFFLINE_VARS)
