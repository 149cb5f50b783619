"""bench/sid_iteration.py on the tiny zoo: the trainer's loop dispatches hardly more operators than the network
passes it contains (a device-independent check of the loop's overhead; the timed ratio needs a quiet GPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import sid_iteration


def test_loop_adds_few_operators_to_the_network_passes(tmp_path, monkeypatch):
    out = tmp_path / "figures.jsonl"
    monkeypatch.setattr(sys, "argv", ["sid_iteration.py", "--teacher", "tiny-sana", "--iters", "3", "--repeats", "1",
                                      "--count-ops", "--json", str(out)])
    assert sid_iteration.main() == 0
    row = json.loads(out.read_text())
    # Noise draws, the fused optimiser steps, the gradient norms and clamps: about 3% on tiny SANA. A per-tensor
    # optimiser (CPU for-each Adam: ~5 operators per parameter tensor) would add 12-16%.
    assert 1.0 <= row["ops_ratio_median"] <= 1.06
    assert row["iterations"] == 2 and row["gc_ms_median"] >= 0
    assert row["floor_ms"] <= row["floor_typical_ms"]  # fastest repeat <= median repeat, pass by pass

