"""`sidrepro plan`: its jobs are Snakemake's (a dry run of each config in a copy of the workflow), its GPU figures
trace to the benchmark rows they name, its schedule never gets slower with more nodes, and bad input gets named
errors."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from sidrepro.cli import main
from sidrepro.plan import make_plan
from sidrepro.plan.bench import FORWARDS_PER_SAMPLE, Bench
from sidrepro.plan.schedule import Task, critical_path, list_schedule, wall_time
from sidrepro.plan.workflow import load_config, workflow_jobs

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
CONFIGS = {"paper": REPO / "workflow/config/paper.yaml", "smoke": REPO / "workflow/config/smoke.yaml"}


def _copy_workflow(folder: Path) -> None:
    shutil.copy(REPO / "Snakefile", folder / "Snakefile")
    shutil.copytree(REPO / "workflow", folder / "workflow")


@pytest.fixture(scope="module")
def paper():
    return make_plan(CONFIGS["paper"], nodes=2, gpu="h100")


def _dry_run(folder: Path, name: str) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    """(rule, wildcards, resources) of every job of `snakemake -n --forceall` for one config (paper: the default)."""
    _copy_workflow(folder)
    extra = [] if name == "paper" else [f"--configfile={CONFIGS[name]}"]
    proc = subprocess.run([SNAKEMAKE, "-n", "--forceall", *extra], cwd=folder, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = re.search(r"^Job stats:\n.*?\n-+ +-+\n(.*?)^total +(\d+)$", proc.stdout, re.MULTILINE | re.DOTALL)
    counts = {rule: int(n) for rule, n in re.findall(r"^(\S+) +(\d+)$", stats.group(1), re.MULTILINE)}
    jobs = []
    for block in re.split(r"^(?:local)?rule ", proc.stdout, flags=re.MULTILINE)[1:]:
        rule, _, body = block.partition(":\n")

        def field(name: str, body: str = body) -> dict[str, str]:
            m = re.search(rf"^\s+{name}: (.*)$", body, re.MULTILINE)
            return dict(kv.partition("=")[::2] for kv in m.group(1).split(", ")) if m else {}

        jobs.append((rule, field("wildcards"), field("resources")))
    assert Counter(r for r, _, _ in jobs) == counts and sum(counts.values()) == int(stats.group(2))
    return jobs


@pytest.mark.parametrize("name", ["paper", "smoke"])
def test_plan_has_exactly_the_jobs_of_a_snakemake_dry_run(tmp_path, name):
    """Same rules, counts, wildcards, GPUs, nodes, runtimes and download slots as Snakemake's own DAG."""
    snake = _dry_run(tmp_path, name)
    ours = workflow_jobs(load_config(CONFIGS[name]))
    assert Counter(j.rule for j in ours.values()) == Counter(r for r, _, _ in snake)
    by_id = {(j.rule, tuple(sorted(j.wc.items()))): j for j in ours.values()}
    assert len(by_id) == len(ours) == len(snake)
    for rule, wc, res in snake:
        job = by_id[(rule, tuple(sorted(wc.items())))]
        nodes = int(res.get("nodes", 1))
        per_node = int(res["gres"].rpartition(":")[2]) if res.get("gres") else None  # a count per node, if any
        total = per_node * nodes if per_node is not None else int(res.get("gpu", 0))
        assert (job.gpus * job.nodes, job.nodes) == (total, nodes), (rule, wc, res)
        assert job.runtime_min == (int(res["runtime"]) if "runtime" in res else None), (rule, wc, res)
        assert job.hub == (res.get("hub") == "1"), (rule, wc, res)


def _row(source: str) -> dict:
    path, line = re.match(r"(\S+\.jsonl):(\d+)", source).groups()
    return json.loads((REPO / path).read_text().splitlines()[int(line) - 1])


def test_measured_figures_equal_the_bench_rows_they_name(paper):
    """Every 'measured' per-iteration figure is its row's iteration_ms; a measured run's hours and GPU-hours are
    iterations x micro-batches per rank x that figure (x GPUs)."""
    run = paper.runs[("sana-1.6b", "data-free")]
    assert run.micro_ms.basis == "measured" and "sid_iteration_h100.jsonl" in run.micro_ms.source
    measured = [r for r in paper.runs.values() if r.micro_ms and r.micro_ms.basis == "measured"]
    assert measured
    for r in measured:
        assert r.micro_ms.value == _row(r.micro_ms.source)["iteration_ms"]
    row = _row(run.micro_ms.source)
    assert (row["teacher"], row["precision"], row["batch_gpu"]) == ("sana-1.6b", run.cfg.precision, run.micro)
    hours = run.iterations * run.rounds * row["iteration_ms"] / 3.6e6
    assert run.hours.value == pytest.approx(hours, rel=1e-12)
    # The job also scores its generator snapshots: 20 of them (1M images, one per 51.2k and the end) x the 10k
    # evaluation captions shared by its GPUs, at the student's sampling time per image.
    from sidrepro.plan.cost import scoring_hours
    from sidrepro.plan.workflow import load_config

    scoring = scoring_hours(load_config(CONFIGS["paper"]), run, paper.sampling["sana-1.6b--data-free"])
    assert scoring.source.startswith("20 scored snapshots x 10000 images / 8 GPUs") and scoring.value > 0
    distill = next(t for t in paper.types if t.name == "distill sana-1.6b data-free")
    assert distill.gpu_hours == pytest.approx((hours + scoring.value) * run.world, rel=1e-12)
    # On the H200, SD3-Medium was measured: its figure is that row's, not an extrapolation.
    h200 = Bench().micro_batch_ms("sd3-medium", "amp", "h200", 1024, 2)
    assert h200.basis == "measured" and h200.value == _row(h200.source)["iteration_ms"]


def test_forward_times_derive_from_the_named_floor(paper):
    fwd = paper.sampling["sana-1.6b--data-free"].forward_ms
    assert fwd.basis == "derived"
    row = _row(fwd.source)
    assert row["precision"] == "bf16" and "not counted" not in row.get("floor", "")
    expected = (row["floor_ms"] - (row.get("encode_ms") or 0)) / (row["batch_gpu"] * FORWARDS_PER_SAMPLE)
    assert fwd.value == pytest.approx(expected, rel=1e-12)


def test_unmeasured_teachers_are_marked_estimates_and_name_their_start(paper):
    """SD3.5-Large was never measured: its figures are estimates that start from a named bench row."""
    for fig in (paper.runs[("sd3.5-large", "data-free")].micro_ms, paper.sampling["teacher--sd3.5-large"].forward_ms):
        assert fig.basis == "estimate" and re.search(r"sid_iteration_h\d+\.jsonl:\d+", fig.source)
        assert "params x tokens" in fig.source
    text = main_output(["plan", "--configfile", str(CONFIGS["paper"]), "--nodes", "2"])
    row = next(line for line in text.splitlines() if line.startswith("distill sd3.5-large data-free"))
    assert " E " in row


def main_output(argv: list[str]) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue()


def test_wall_time_never_grows_with_more_nodes_and_never_beats_the_critical_path(paper):
    crit, chain = critical_path(paper.tasks)
    assert chain[0].startswith("fetch") and chain[-1] == "all"
    assert any(k.startswith("distill[teacher=sd3.5-large") for k in chain)
    walls = [wall_time(paper.tasks, n, 8) for n in (2, 3, 4, 6, 8, 16)]
    assert all(a >= b for a, b in itertools.pairwise(walls)), walls
    assert all(w >= crit - 1e-9 for w in walls) and walls[0] > walls[-1]
    assert paper.wall_hours == walls[0]


def test_list_schedule_on_a_graph_solved_by_hand():
    """Two 1-GPU jobs of 1 h and 2 h, then an exclusive (whole-node) 3 h job after the first, one 2-GPU node:
    the exclusive job waits for the node to empty (t = 2 h) and ends at 5 h; a CPU job runs beside them."""
    tasks = [Task("a", 1.0, 1, 1, False, False, ()), Task("b", 2.0, 1, 1, False, False, ()),
             Task("c", 3.0, 2, 1, True, False, ("a",)), Task("cpu", 3.5, 0, 1, False, False, ())]
    assert critical_path(tasks) == (4.0, ["a", "c"])
    assert list_schedule(tasks, 1, 2) == 5.0
    assert list_schedule(tasks, 2, 2) == 4.0
    hub = [Task("f1", 1.0, 0, 1, False, True, ()), Task("f2", 1.0, 0, 1, False, True, ())]
    assert list_schedule(hub, 1, 8) == 2.0  # downloads one at a time


def test_smoke_plan_prints_every_job_and_no_gpu_hours(capsys):
    text = main_output(["plan", "--configfile", str(CONFIGS["smoke"]), "--json"])
    plan = json.loads(text)
    assert plan["jobs"] == len(workflow_jobs(load_config(CONFIGS["smoke"])))
    assert plan["gpu_hours"] == 0 and sum(t["jobs"] for t in plan["job_types"]) == plan["jobs"]
    assert all(s["forward_ms"] is None for s in plan["sampling"])  # the smoke config asks for no GPU


@pytest.mark.parametrize(("argv", "message"), [
    (["--nodes", "0"], "--nodes: expected a positive integer, got 0"),
    (["--gpus-per-node", "0"], "--gpus-per-node: expected a positive integer, got 0"),
])
def test_bad_counts_are_refused_by_name(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["plan", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--gpu", "a100"], "unknown GPU 'a100': the benchmarks measured h100, h200"),
    (["--nodes", "1"], "needs 2 nodes but the plan has 1 (--nodes)"),
    (["--gpus-per-node", "4"], "asks for 8 GPUs per node but nodes have 4"),
    (["--configfile", "nowhere.yaml"], "no config file nowhere.yaml"),
])
def test_bad_plans_get_named_errors(capsys, argv, message):
    assert main(["plan", "--configfile", str(CONFIGS["paper"]), *argv]) == 2
    assert message in capsys.readouterr().err


def test_library_refuses_zero_nodes():
    with pytest.raises(ValueError, match="--nodes must be at least 1, got 0"):
        make_plan(CONFIGS["paper"], nodes=0)
