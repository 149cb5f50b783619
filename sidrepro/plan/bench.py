"""Per-iteration and per-forward GPU times from the measured benchmarks in ``bench/results/sid_iteration_<gpu>.jsonl``
(``bench/sid_iteration.py --real-size``: one GPU, random-weight real-size transformer, one micro-batch of
``batch_gpu`` samples per iteration), each returned with the file and line it came from.

Fields used: ``iteration_ms`` (median time of one trainer iteration, K ~ U{1..4} generator steps), ``floor_ms``
(median sum of the network passes the iteration contains, timed alone), ``encode_ms`` (the text encoding part of the
floor, where recorded), ``batch_gpu``, ``precision``, ``resolution`` (pixels through the zoo's 8x VAE; SANA's real
DC-AE compresses 32x, so a SANA row's real resolution is 4x, as ``bench/sid_iteration.py``'s memory check counts).

Row choice, per (teacher, precision, GPU): rows of a run as the trainer runs (not profiled, no cuDNN autotuning),
with the trainer's allocator setting (``expandable_segments:True``) where any row has it, then the row with the
median ``iteration_ms`` (the lower one of an even count). For forward times, rows whose floor counts every pass are
preferred (``floor`` = "... not counted ..." marks early rows whose floor left out the teacher's recomputation).

Where the config's teacher or GPU was not measured, a figure is extrapolated and marked ``estimate``:
- another GPU: times the ratio of the two GPUs' rows for the teachers measured on both (same precision);
- another teacher, resolution or micro-batch: from the same family's measured teacher (SANA from SANA, SD3 and FLUX
  from SD3: MMDiT blocks), scaled by parameters x tokens per sample x samples (the matmul FLOPs), which leaves out
  attention's quadratic term and the host overhead that dominates small models.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .models import family, params, tokens

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench" / "results"
TRAINER_ALLOC = "expandable_segments:True"
MEAN_K = 2.5  # mean generator steps of an iteration: K ~ U{1..4}
# Forward-equivalents per sample in one iteration's floor (gradient checkpointing on, a backward = two forwards, a
# recomputed block = one): (2K - 1) no-grad generator passes; the fake network's CFG pass (2 samples) with backward
# and recomputation (x4 = 8); the generator loss pass: generator forward (1), teacher and fake CFG forwards (2 + 2),
# the backward to the generator through teacher and fake (recompute + input gradients, 2 x 2 each) and through the
# generator (recompute + full backward, 3) = 16. Total 2K + 23.
FORWARDS_PER_SAMPLE = 2 * MEAN_K + 23


@dataclass(frozen=True)
class Figure:
    """A number with where it came from: ``basis`` is measured (a bench row's value), derived (from a bench row by
    a stated formula), estimate (extrapolated to another teacher, resolution or GPU), upper bound (a requested
    runtime) or assumed (a stated constant)."""

    value: float
    basis: str
    source: str
    gpu: str = ""

    def scaled(self, factor: float, why: str, basis: str | None = None) -> Figure:
        if factor == 1.0:
            return self
        return Figure(self.value * factor, basis or self.basis, f"{self.source} x {factor:.3g} ({why})", self.gpu)


@dataclass(frozen=True)
class Row:
    """One benchmark row: its file (relative to the repository), line number and fields."""

    path: str  # relative to the repository
    line: int
    data: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def real_resolution(self) -> int:
        return self.data["resolution"] * (4 if family(self.data["teacher"]) == "sana" else 1)

    @property
    def floor_complete(self) -> bool:
        return "not counted" not in str(self.data.get("floor", ""))


class Bench:
    """The benchmark rows of every GPU in ``folder`` (``sid_iteration_<gpu>.jsonl``)."""

    def __init__(self, folder: Path = BENCH_DIR) -> None:
        self.rows: dict[str, list[Row]] = {}
        self.device: dict[str, str] = {}
        for path in sorted(Path(folder).glob("sid_iteration_*.jsonl")):
            gpu = path.stem.removeprefix("sid_iteration_")
            rel = _relative(path)
            self.rows[gpu] = [Row(rel, i + 1, json.loads(line)) for i, line in
                              enumerate(path.read_text(encoding="utf-8").splitlines()) if line.strip()]
            self.device[gpu] = next((r.data["device"] for r in self.rows[gpu]), gpu)
        if not self.rows:
            raise FileNotFoundError(f"no benchmark results (sid_iteration_<gpu>.jsonl) in {folder}: run "
                                    "bench/sid_iteration_gpu.sh on a GPU, or pass the folder that holds them")

    @property
    def gpus(self) -> tuple[str, ...]:
        return tuple(self.rows)

    def check_gpu(self, gpu: str) -> None:
        if gpu not in self.rows:
            raise ValueError(f"unknown GPU {gpu!r}: the benchmarks measured {', '.join(self.gpus)} "
                             f"(bench/results/sid_iteration_<gpu>.jsonl); choose one of them")

    def choose(self, arch: str, precision: str, gpu: str, *, complete_floor: bool = False) -> Row | None:
        """The representative row of ``arch`` in ``precision`` on ``gpu`` (see the module docstring)."""
        rows = [r for r in self.rows.get(gpu, []) if r.data["teacher"] == arch and r.data["precision"] == precision
                and r.data.get("real_size") and not r.data.get("profiled") and not r.data.get("cudnn_benchmark")]
        for prefer in ((lambda r: r.data.get("alloc_conf") == TRAINER_ALLOC),
                       (lambda r: r.floor_complete) if complete_floor else None):
            if prefer is not None and any(prefer(r) for r in rows):
                rows = [r for r in rows if prefer(r)]
        if not rows:
            return None
        rows.sort(key=lambda r: r.data["iteration_ms"])
        return rows[(len(rows) - 1) // 2]

    def gpu_ratio(self, gpu: str, other: str, precision: str) -> Figure:
        """How much longer an iteration takes on ``gpu`` than on ``other`` (geometric mean over the teachers
        measured on both, in ``precision``)."""
        pairs = []
        for arch in sorted({r.data["teacher"] for r in self.rows.get(gpu, [])}):
            a, b = self.choose(arch, precision, gpu), self.choose(arch, precision, other)
            if a and b:
                pairs.append((arch, a, b))
        if not pairs:
            return Figure(1.0, "assumed", f"no teacher measured in {precision} on both {gpu} and {other}: ratio 1")
        ratio = math.exp(statistics.fmean(math.log(a.data["iteration_ms"] / b.data["iteration_ms"])
                                          for _, a, b in pairs))
        refs = "; ".join(f"{arch} {a.ref} / {b.ref}" for arch, a, b in pairs)
        return Figure(ratio, "derived", f"{gpu}/{other} iteration ratio {ratio:.3f} ({refs})")

    def _reference(self, arch: str, precision: str, gpu: str, complete_floor: bool) -> tuple[Row, str]:
        """The row to start from: the architecture itself, else its family's, else any, on ``gpu`` first."""
        measured = {r.data["teacher"] for rows in self.rows.values() for r in rows}
        same = sorted(a for a in measured if a != arch and family(a) == family(arch))
        other = sorted(a for a in measured if family(a) != family(arch))
        for cand in [arch, *same, *other]:
            for where in [gpu, *(g for g in self.gpus if g != gpu)]:
                for prec in (precision, *(p for p in ("amp", "bf16", "fp32") if p != precision)):
                    row = self.choose(cand, prec, where, complete_floor=complete_floor)
                    if row is not None:
                        return row, where
        raise ValueError(f"no benchmark row to extrapolate {arch} from (bench/results/sid_iteration_*.jsonl)")

    def _extrapolate(self, start: Figure, row: Row, where: str, arch: str, precision: str, gpu: str,
                     resolution: int, samples: int | None, text_tokens: int | None) -> Figure:
        ref = row.data["teacher"]
        fig = start
        if where != gpu:
            fig = fig.scaled(self.gpu_ratio(gpu, where, row.data["precision"]).value, f"{gpu}/{where}", "estimate")
        if row.data["precision"] != precision:
            fig = Figure(fig.value, "estimate", f"{fig.source} (measured in {row.data['precision']})", gpu)
        size = params(arch) * tokens(arch, resolution, text_tokens) / (params(ref) * tokens(ref, row.real_resolution))
        fig = fig.scaled(size, f"params x tokens of {arch} at {resolution} px / {ref} at {row.real_resolution} px",
                         "estimate")
        if samples is not None:  # per micro-batch: linear in its samples
            fig = fig.scaled(samples / row.data["batch_gpu"], f"{samples} / {row.data['batch_gpu']} samples",
                             "estimate" if fig.basis == "estimate" else "derived")
        return Figure(fig.value, fig.basis, fig.source, self.device.get(gpu, gpu))

    def micro_batch_ms(self, arch: str, precision: str, gpu: str, resolution: int, micro: int) -> Figure:
        """Milliseconds of one training iteration over one micro-batch of ``micro`` samples on one ``gpu``."""
        row, where = self._reference(arch, precision, gpu, complete_floor=False)
        start = Figure(row.data["iteration_ms"], "measured", f"{row.ref} iteration_ms", self.device[where])
        return self._extrapolate(start, row, where, arch, precision, gpu, resolution, micro, None)

    def forward_ms(self, arch: str, gpu: str, resolution: int, text_tokens: int | None = None) -> Figure:
        """Milliseconds of one transformer forward pass of one sample in bf16 (how sampling runs on a GPU), from a
        bench row's floor: (floor_ms - encode_ms) / (batch_gpu x forward-equivalents per sample)."""
        row, where = self._reference(arch, "bf16", gpu, complete_floor=True)
        fe = FORWARDS_PER_SAMPLE - (0 if row.floor_complete else 2)  # the teacher's recomputation, 2 samples
        enc = row.data.get("encode_ms") or 0.0
        value = (row.data["floor_ms"] - enc) / (row.data["batch_gpu"] * fe)
        start = Figure(value, "derived", f"{row.ref} (floor_ms - encode_ms) / (batch_gpu {row.data['batch_gpu']} x "
                                         f"{fe:g} forwards)", self.device[where])
        return self._extrapolate(start, row, where, arch, "bf16", gpu, resolution, None, text_tokens)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(BENCH_DIR.parents[1]))
    except ValueError:
        return str(path)
