"""The plan as text (tables with the source of every GPU figure) and as JSON."""

from __future__ import annotations

import textwrap
from typing import Any

from . import GPU_MEMORY_GB, Plan
from .bench import FORWARDS_PER_SAMPLE
from .cost import BANDWIDTH_MB_S

BASIS_MARK = {"measured": "m", "derived": "d", "registry": "r", "estimate": "E", "assumed": "a",
              "upper bound": "U", "not measured": "?", "-": "-"}
LEGEND = ("basis: m measured (a bench row's value), d derived from a bench row by a stated formula, E estimate "
          "(extrapolated to another teacher, resolution or GPU), r registry figure, a assumed constant, U upper bound "
          "(the requested runtime; no measurement), ? not measured (no benchmark, no runtime: counted as 0)")


def _gb(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / 1e3:,.1f} TB" if x >= 1e3 else f"{x:,.1f} GB" if x >= 0.1 else f"{x * 1e3:,.1f} MB"


def format_text(plan: Plan) -> str:
    """The plan's tables: job types, distillation and sampling inputs, disk, critical path and wall time."""
    cap = GPU_MEMORY_GB.get(plan.gpu)
    uses_gpu = any(t.gpus for t in plan.tasks)
    where = f"GPU figures for {plan.gpu} ({plan.device})" if uses_gpu else \
        "the config asks for no GPU: every job runs on CPUs, so no GPU figure applies"
    lines = [f"cost plan of {plan.config} on {plan.nodes} node(s) x {plan.gpus_per_node} GPUs; {where}",
             *textwrap.wrap(LEGEND, 120, subsequent_indent="  "), ""]
    lines.append(f"{'job type':44} {'jobs':>5} {'GPUs':>5} {'max h/job':>9} {'GPU-h':>9} {'basis':>5}  peak GB/GPU")
    for t in plan.types:
        mem = "-" if t.memory_gb is None else f"{t.memory_gb:.1f}" + (
            "" if cap is None else (" (fits)" if t.memory_gb <= cap else f" (EXCEEDS {cap:g})"))
        lines.append(f"{t.name:44} {t.jobs:>5} {t.gpus:>5} {t.hours:>9.2f} {t.gpu_hours:>9,.1f} "
                     f"{BASIS_MARK.get(t.basis, t.basis):>5}  {mem}")
    bound = sum(t.gpu_hours for t in plan.types if t.basis == "upper bound")
    lines.append(f"{'total':44} {len(plan.jobs):>5} {'':>5} {'':>9} {plan.gpu_hours:>9,.1f}"
                 + (f"  ({bound:,.1f} of them upper bounds: requested runtimes)" if bound else ""))
    if any(t.memory_gb is not None for t in plan.types):
        lines.append("peak GB/GPU: a training rank's steady state (sidrepro/distill/memory.py), GB = 1e9 bytes")
    lines += ["", "distillation (per job; ms = one micro-batch on one GPU, from the bench row named):"]
    lines.append(f"  {'teacher setting':38} {'iters':>6} {'ranks':>5} {'batch':>6} {'micro x rounds':>14} "
                 f"{'ms':>7} {'hours':>7}")
    shown = ""
    for (t, s), r in plan.runs.items():
        ms = "-" if r.micro_ms is None else f"{r.micro_ms.value:.0f}"
        h = "-" if r.hours is None else f"{r.hours.value:.1f}"
        lines.append(f"  {t + ' ' + s:38} {r.iterations:>6} {r.world:>5} {r.batch:>6} "
                     f"{f'{r.micro} x {r.rounds}':>14} {ms:>7} {h:>7}  {r.cfg.precision} {r.cfg.resolution} px")
        if r.micro_ms is not None and r.micro_ms.source != shown:  # rows with the same source share one line
            shown = r.micro_ms.source
            lines.append(f"      {BASIS_MARK[r.micro_ms.basis]}: {shown}")
    if plan.gpu_ratio is not None and uses_gpu:
        lines.append(f"  GPU ratio: {plan.gpu_ratio.source}")
    lines += ["", f"sampling (per image: transformer passes x bf16 forward of one sample, from a bench row's floor / "
                  f"{FORWARDS_PER_SAMPLE:g} forward-equivalents per sample; decode, text encoding and PNG not "
                  "included):"]
    lines.append(f"  {'model':38} {'images':>7} {'passes':>6} {'ms/pass':>8} {'s/image':>8}  "
                 "(images: COCO subset + GenEval)")
    shown = ""
    for m, s in plan.sampling.items():
        per = s.sec_per_image
        ms = "-" if s.forward_ms is None else f"{s.forward_ms.value:.2f}"
        lines.append(f"  {m:38} {s.coco_images + s.geneval_images:>7} {s.spec.forwards:>6} {ms:>8} "
                     f"{'-' if per is None else f'{per.value:.3f}':>8}")
        if s.forward_ms is not None and s.forward_ms.source != shown:
            shown = s.forward_ms.source
            lines.append(f"      {BASIS_MARK[s.forward_ms.basis]}: {shown}")
    lines += ["", "disk written per stage (GB = 1e9 bytes):"]
    for st in plan.stages:
        lines.append(f"  {st.stage:46} {_gb(st.gb):>10} {BASIS_MARK.get(st.basis, st.basis):>2}  {st.how}")
    total = sum(st.gb for st in plan.stages if st.gb)
    lines.append(f"  {'total':46} {_gb(total):>10}")
    lines += ["", f"critical path (unlimited nodes): {plan.critical_hours:.1f} h"]
    for key in plan.critical_chain:
        f = plan.hours[key]
        lines.append(f"  {key:58} {f.value:8.2f} h  {BASIS_MARK.get(f.basis, f.basis)}  {f.source}")
    bounds = sum(1 for k in plan.critical_chain if plan.hours[k].basis == "upper bound")
    if bounds:
        lines.append(f"  ({bounds} job(s) on it have no measurement and count their requested runtime: an upper bound)")
    lines.append(f"wall time on {plan.nodes} node(s) x {plan.gpus_per_node} GPUs (list schedule): "
                 f"{plan.wall_hours:.1f} h")
    note = ("not modelled: FSDP communication between GPUs and nodes, checkpoint writes, start-up, queue and requeue "
            "waits (a run longer than the profile's time limit is several jobs back to back), the data-aided shard "
            "encoding, evaluation features (FID, CLIP, scorers: upper bounds); downloads at an assumed "
            f"{BANDWIDTH_MB_S:g} MB/s.")
    lines += ["", *textwrap.wrap(note, 120)]
    return "\n".join(lines)


def to_json(plan: Plan) -> dict[str, Any]:
    """Everything the text shows, with every figure's value, basis and source."""
    def fig(f):
        return None if f is None else {"value": f.value, "basis": f.basis, "source": f.source, "gpu": f.gpu}

    return {
        "config": str(plan.config), "gpu": plan.gpu, "device": plan.device, "nodes": plan.nodes,
        "gpus_per_node": plan.gpus_per_node, "jobs": len(plan.jobs), "gpu_hours": plan.gpu_hours,
        "job_types": [vars(t) for t in plan.types],
        "distill": [{"teacher": t, "setting": s, "iterations": r.iterations, "gpus": r.world, "batch": r.batch,
                     "micro_batch": r.micro, "rounds": r.rounds, "precision": r.cfg.precision,
                     "resolution": r.cfg.resolution, "micro_batch_ms": fig(r.micro_ms), "hours": fig(r.hours),
                     "memory_gb": None if r.memory is None else r.memory.total_gb}
                    for (t, s), r in plan.runs.items()],
        "sampling": [{"model": m, "arch": s.spec.arch, "resolution": s.spec.resolution, "passes": s.spec.forwards,
                      "coco_images": s.coco_images, "geneval_images": s.geneval_images,
                      "forward_ms": fig(s.forward_ms), "sec_per_image": fig(s.sec_per_image)}
                     for m, s in plan.sampling.items()],
        "gpu_ratio": fig(plan.gpu_ratio),
        "disk": [vars(st) for st in plan.stages],
        "critical_path": {"hours": plan.critical_hours,
                          "jobs": [{"job": k, **fig(plan.hours[k])} for k in plan.critical_chain]},
        "wall_hours": plan.wall_hours,
        "per_job": {k: {"rule": j.rule, "wildcards": j.wc, "gpus": j.gpus, "nodes": j.nodes,
                        "hours": fig(plan.hours[k])} for k, j in plan.jobs.items()},
    }
