"""A tiny GenEval metadata file for the smoke workflow and the tests: one prompt per task, in the format of the
benchmark's ``prompts/evaluation_metadata.jsonl`` (``tag``, ``include``/``exclude`` clauses, ``prompt``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LINES = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
    {"tag": "two_object", "include": [{"class": "bench", "count": 1}, {"class": "cat", "count": 1}],
     "prompt": "a photo of a bench and a cat"},
    {"tag": "counting", "include": [{"class": "bench", "count": 2}], "exclude": [{"class": "bench", "count": 3}],
     "prompt": "a photo of two benches"},
    {"tag": "colors", "include": [{"class": "bench", "count": 1, "color": "red"}], "prompt": "a photo of a red bench"},
    {"tag": "position", "include": [{"class": "cat", "count": 1}, {"class": "bench", "count": 1,
                                                                     "position": ["left of", 0]}],
     "prompt": "a photo of a bench left of a cat"},
    {"tag": "color_attr", "include": [{"class": "bench", "count": 1, "color": "blue"},
                                      {"class": "cat", "count": 1, "color": "yellow"}],
     "prompt": "a photo of a blue bench and a yellow cat"},
]


def write(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(line) + "\n" for line in LINES), encoding="utf-8")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    print(write(parser.parse_args().out))
