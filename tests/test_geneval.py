"""GenEval: metadata -> caption rows for the sharded sampler, sample folder -> GenEval layout, the summary arithmetic
(hand-computed), the scorer's rules (hand cases, and equality with GenEval's own evaluate_images.py on random
detections when a GenEval checkout is at $SIDREPRO_GENEVAL_REPO), the workflow's GenEval jobs, and (slow, when the
GenEval environment, built on first use where the workflow keeps it) tiny random-weight Mask2Former + CLIP
scored end to end in that environment, again checked against GenEval's own code on the same detections."""

from __future__ import annotations

import ast
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sidrepro.cli import main
from sidrepro.envs import env_dir_for
from sidrepro.evaluate import geneval
from sidrepro.evaluate import geneval_scorer as gs

REPO = Path(__file__).resolve().parents[1]
SMOKE_SCRIPT = REPO / "workflow" / "scripts" / "geneval_smoke_metadata.py"
OFFICIAL = Path(os.environ.get("SIDREPRO_GENEVAL_REPO", "/nonexistent"))
OFFICIAL_EVAL = OFFICIAL / "evaluation" / "evaluate_images.py"
GENEVAL_SPEC = REPO / "workflow" / "envs" / "geneval.txt"
GENEVAL_ENV = env_dir_for(GENEVAL_SPEC)  # where the workflow keeps it ($SIDREPRO_ENVS or ~/.cache/sidrepro/envs)


def _smoke_metadata(path: Path) -> Path:
    subprocess.run([sys.executable, str(SMOKE_SCRIPT), "--out", str(path)], check=True, capture_output=True)
    return path


# --- prompts ----------------------------------------------------------------------------------------------------

def test_caption_rows_give_each_image_its_own_id_and_seed(tmp_path, capsys):
    meta = geneval.load_metadata(_smoke_metadata(tmp_path / "meta.jsonl"))
    assert [m["tag"] for m in meta] == list(geneval.TASKS)
    rows = geneval.caption_rows(meta, 4)
    assert len(rows) == 24 and len({p for p, _, _ in rows}) == 24
    assert rows[:5] == [(0, 0, "a photo of a bench")] * 1 + [(1, 0, "a photo of a bench"), (2, 0, "a photo of a bench"),
                                                             (3, 0, "a photo of a bench"),
                                                             (4, 1, "a photo of a bench and a cat")]
    assert main(["geneval", "prompts", "--metadata", str(tmp_path / "meta.jsonl"), "--out", str(tmp_path / "c.jsonl"),
                 "--images-per-prompt", "3"]) == 0
    assert "6 prompts x 3 images = 18 caption rows" in capsys.readouterr().out
    again = geneval.read_captions(tmp_path / "c.jsonl")
    assert again == geneval.caption_rows(meta, 3)
    from sidrepro.evaluate.sampling import image_seed

    assert len({image_seed(0, p) for p, _, _ in again}) == 18


@pytest.mark.parametrize("line, error", [
    ('{"tag": "shapes", "include": [{"class": "cat", "count": 1}], "prompt": "x"}', "tag 'shapes'"),
    ('{"tag": "counting", "include": [{"class": "cat", "count": "2"}], "prompt": "x"}', "include must be"),
    ('{"tag": "counting", "include": [], "prompt": "x"}', "no include clause"),
    ('{"tag": "colors", "include": [{"class": "cat", "count": 1}]}', "no prompt"),
    ('not json', "line 1 is not JSON"),
])
def test_bad_metadata_lines_are_named(tmp_path, line, error):
    (tmp_path / "m.jsonl").write_text(line + "\n")
    with pytest.raises(geneval.GenEvalError, match=error):
        geneval.load_metadata(tmp_path / "m.jsonl")


def test_metadata_pin_matches_the_official_file_when_a_checkout_is_given():
    if not (OFFICIAL / "prompts" / "evaluation_metadata.jsonl").exists():
        pytest.skip("set SIDREPRO_GENEVAL_REPO to a djghosh13/geneval checkout")
    path = OFFICIAL / "prompts" / "evaluation_metadata.jsonl"
    assert geneval.sha256_file(path) == geneval.METADATA_SHA256
    meta = geneval.load_metadata(path)
    assert len(meta) == geneval.NUM_PROMPTS == 553
    assert len(geneval.caption_rows(meta)) == 2212
    names = (OFFICIAL / "evaluation" / "object_names.txt").read_text().split("\n")
    assert [n.strip() for n in names if n.strip()] == gs.CLASSNAMES


def test_download_refuses_a_changed_file(tmp_path):
    src = tmp_path / "src.jsonl"
    src.write_text("hello\n")
    url = src.as_uri()
    digest = geneval.download(url, tmp_path / "a" / "out.jsonl", sha256=geneval.sha256_file(src))
    assert (tmp_path / "a" / "out.jsonl").read_text() == "hello\n" and digest == geneval.sha256_file(src)
    with pytest.raises(geneval.GenEvalError, match=r"sha256 .* expected c9d0c4f2"):
        geneval.download(url, tmp_path / "b.pth", sha256_prefix="c9d0c4f2")
    assert not (tmp_path / "b.pth").exists() and not (tmp_path / "b.pth.part").exists()
    with pytest.raises(geneval.GenEvalError, match="could not download"):
        geneval.download((tmp_path / "missing").as_uri(), tmp_path / "c")


# --- layout and summary -----------------------------------------------------------------------------------------

def _fake_samples(folder: Path, meta: list[dict], per_prompt: int, skip: set[int] = frozenset()) -> Path:
    """A merged sample folder as `sidrepro sample` writes it (manifest rows + PNGs), without a model."""
    folder.mkdir(parents=True)
    rows = []
    for p, i, caption in geneval.caption_rows(meta, per_prompt):
        if p in skip:
            continue
        name = f"{p:06d}.png"
        Image.new("RGB", (16, 16), (p * 10 % 256, 0, 0)).save(folder / name)
        rows.append({"prompt_id": p, "image_id": i, "caption": caption, "file": name})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sorted(rows, key=lambda r: -r[
        "prompt_id"])))
    return folder


def test_layout_is_genevals_folder_format(tmp_path):
    meta = geneval.load_metadata(_smoke_metadata(tmp_path / "meta.jsonl"))
    samples = _fake_samples(tmp_path / "s", meta, 2)
    assert geneval.make_layout(samples, meta, tmp_path / "layout", images_per_prompt=2) == 12
    assert sorted(p.name for p in (tmp_path / "layout").iterdir()) == [f"{i:05d}" for i in range(6)]
    assert json.loads((tmp_path / "layout" / "00004" / "metadata.jsonl").read_text()) == meta[4]
    assert sorted(p.name for p in (tmp_path / "layout" / "00004" / "samples").iterdir()) == ["0000.png", "0001.png"]
    # image k of prompt i is prompt id i * 2 + k
    linked = tmp_path / "layout" / "00004" / "samples" / "0001.png"
    assert linked.read_bytes() == (samples / "000009.png").read_bytes()
    jobs = gs.image_jobs(str(tmp_path / "layout"))
    assert [(Path(p).parts[-3:], m["tag"]) for p, m in jobs][:3] == [
        (("00000", "samples", "0000.png"), "single_object"), (("00000", "samples", "0001.png"), "single_object"),
        (("00001", "samples", "0000.png"), "two_object")]


def test_layout_refuses_missing_images_and_foreign_captions(tmp_path):
    meta = geneval.load_metadata(_smoke_metadata(tmp_path / "meta.jsonl"))
    samples = _fake_samples(tmp_path / "s", meta, 2, skip={5})
    with pytest.raises(geneval.GenEvalError, match=r"1 of 6 prompts have fewer than 2 images \(lines \[2\]\)"):
        geneval.make_layout(samples, meta, tmp_path / "layout", images_per_prompt=2)
    assert geneval.make_layout(samples, meta, tmp_path / "layout", images_per_prompt=2, require_complete=False) == 11
    other = [dict(m, prompt=m["prompt"] + "!") for m in meta]
    with pytest.raises(geneval.GenEvalError, match="sample with this metadata's captions"):
        geneval.make_layout(samples, other, tmp_path / "layout", images_per_prompt=2)


def test_summary_arithmetic_by_hand():
    def r(tag, ok, prompt):
        return {"tag": tag, "correct": ok, "metadata": json.dumps({"tag": tag, "prompt": prompt})}

    rows = ([r("single_object", True, "a")] * 3 + [r("single_object", False, "a")]  # 3/4
            + [r("counting", False, "b")] * 4  # 0/4, prompt b never right
            + [r("counting", True, "c"), r("counting", False, "c")]  # counting: 1/6 overall
            + [r("position", True, "d")])  # 1/1
    s = geneval.summarize(rows)
    assert s["per_task"] == pytest.approx({"single_object": 0.75, "counting": 1 / 6, "position": 1.0})
    assert list(s["per_task"]) == ["single_object", "counting", "position"]  # first-appearance order, as GenEval
    assert s["overall"] == pytest.approx((0.75 + 1 / 6 + 1.0) / 3)  # the mean over tasks, not over images
    assert s["correct_images"] == pytest.approx(5 / 11)
    assert s["num_prompts"] == 4 and s["correct_prompts"] == pytest.approx(3 / 4)
    assert s["per_task_counts"]["counting"] == {"correct": 1, "images": 6} and s["num_images"] == 11
    with pytest.raises(geneval.GenEvalError):
        geneval.summarize([])


# --- the scorer's rules -------------------------------------------------------------------------------------------

def test_relative_position_and_iou_by_hand():
    a, b = [0, 0, 10, 10], [30, 0, 40, 10]
    assert gs.relative_position(a, b) == {"left of"} and gs.relative_position(b, a) == {"right of"}
    assert gs.relative_position([0, 30, 10, 40], [0, 0, 10, 10]) == {"below"}
    assert gs.relative_position([0, 0, 10, 10], [30, 30, 40, 40]) == {"left of", "above"}  # 45 degrees: both
    # centres 1 px apart, closer than 0.1 x the summed widths (2 px): no relation; without that margin, left of
    assert gs.relative_position([0, 0, 10, 10], [1, 0, 11, 10]) == set()
    assert gs.relative_position([0, 0, 10, 10], [1, 0, 11, 10], 0.0) == {"left of"}
    # 11 px apart: shrunk to 9 px, still left of; 1 px off vertically is shrunk to nothing
    assert gs.relative_position([0, 0, 10, 10], [11, 1, 21, 11]) == {"left of"}
    assert gs.box_iou([0, 0, 9, 9], [0, 0, 9, 9]) == 1 and gs.box_iou([0, 0, 9, 9], [10, 10, 19, 19]) == 0
    assert gs.box_iou([0, 0, 9, 9], [5, 0, 14, 9]) == pytest.approx(50 / 150)


def _dets(entries: dict[str, list[tuple]]) -> list[np.ndarray]:
    out = [np.zeros((0, 5), dtype=np.float32) for _ in gs.CLASSNAMES]
    for name, boxes in entries.items():
        out[gs.CLASSNAMES.index(name)] = np.array(boxes, dtype=np.float32).reshape(-1, 5)
    return out


def test_rules_by_hand():
    dets = _dets({"bench": [(0, 0, 10, 10, 0.95), (50, 0, 60, 10, 0.5), (0, 50, 10, 60, 0.2)],
                  "cat": [(30, 0, 40, 10, 0.35)]})
    objs = gs.select_objects(dets, None, "two_object")
    assert [round(float(b[4]), 2) for b, _ in objs["bench"]] == [0.95, 0.5] and len(objs["cat"]) == 1
    assert list(gs.select_objects(dets, None, "counting")) == ["bench"]  # only the 0.95 bench passes 0.9
    red = lambda name, found: ["red"] * len(found)  # noqa: E731
    meta = {"tag": "two_object", "include": [{"class": "bench", "count": 1}, {"class": "cat", "count": 1}]}
    assert gs.judge(objs, meta, red) == (True, "")
    meta = {"tag": "counting", "include": [{"class": "bench", "count": 2}], "exclude": [{"class": "bench", "count": 3}]}
    ok, why = gs.judge(gs.select_objects(dets, None, "counting"), meta, red)
    assert not ok and why == "expected bench>=2, found 1"
    meta = {"tag": "colors", "include": [{"class": "bench", "count": 1, "color": "blue"}]}
    ok, why = gs.judge(objs, meta, red)
    assert not ok and why == "expected blue bench>=1, found 0 blue; and 1 red"
    # the most confident bench (x 0..10) is left of the cat (x 30..40); the count-1 clause keeps only that bench
    meta = {"tag": "position", "include": [{"class": "cat", "count": 1},
                                           {"class": "bench", "count": 1, "position": ["left of", 0]}]}
    assert gs.judge(objs, meta, red) == (True, "")
    meta["include"][1]["position"] = ["right of", 0]
    ok, why = gs.judge(objs, meta, red)
    assert not ok and why == "expected bench right of target, found left of target"
    meta = {"tag": "position", "include": [{"class": "dog", "count": 1},
                                           {"class": "bench", "count": 1, "position": ["left of", 0]}]}
    assert gs.judge(objs, meta, red) == (False, "expected dog>=1, found 0\nno target for bench to be left of")


def _official_functions(options: dict) -> dict:
    """GenEval's own compute_iou / relative_position / evaluate / evaluate_image, taken from its evaluate_images.py
    (by AST: the module itself parses arguments and asserts CUDA at import) with its globals set."""
    tree = ast.parse(OFFICIAL_EVAL.read_text())
    keep = [n for n in tree.body if isinstance(n, ast.FunctionDef)
            and n.name in ("compute_iou", "relative_position", "evaluate", "evaluate_image")]
    from PIL import ImageOps

    ns = {"np": np, "json": json, "Image": Image, "ImageOps": ImageOps, "classnames": gs.CLASSNAMES,
          "COLORS": gs.COLORS, "object_detector": None, "THRESHOLD": options["threshold"],
          "COUNTING_THRESHOLD": options["counting_threshold"], "MAX_OBJECTS": options["max_objects"],
          "NMS_THRESHOLD": options["max_overlap"], "POSITION_THRESHOLD": options["position_threshold"]}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(OFFICIAL_EVAL), "exec"), ns)
    return ns


def _colour_of(box) -> str:
    return gs.COLORS[int(box[0] * 7 + box[1] * 3) % 3]  # deterministic, few colours: matches and misses both occur


def _random_case(rng: random.Random, meta: dict):
    classes = [c["class"] for c in meta["include"]] + [rng.choice(gs.CLASSNAMES)]
    entries = {}
    for name in classes:
        n = rng.choice([0, 1, 1, 2, 3, 4, 20])
        boxes = []
        for _ in range(n):
            x0, y0 = rng.randrange(0, 200), rng.randrange(0, 200)
            x1, y1 = x0 + rng.randrange(1, 60), y0 + rng.randrange(1, 60)
            boxes.append((x0, y0, x1, y1, rng.choice([0.3, 0.9, rng.random(), rng.random()])))
        entries[name] = boxes
    return _dets(entries)


@pytest.mark.skipif(not OFFICIAL_EVAL.exists(), reason="set SIDREPRO_GENEVAL_REPO to a djghosh13/geneval checkout")
@pytest.mark.parametrize("overrides", [{}, {"max_overlap": 0.5, "position_threshold": 0.0, "max_objects": 2}])
def test_rules_equal_genevals_own_code_on_random_detections(tmp_path, overrides):
    options = {**gs.OPTIONS, **overrides}
    off = _official_functions(options)
    image_path = tmp_path / "im.png"
    Image.new("RGB", (256, 256)).save(image_path)
    off["color_classification"] = lambda image, found, classname: [_colour_of(b) for b, _ in found]
    meta_file = OFFICIAL / "prompts" / "evaluation_metadata.jsonl"
    metadata = geneval.load_metadata(meta_file)
    rng = random.Random(0)
    verdicts = {True: 0, False: 0}
    for n in range(1500):
        meta = metadata[n % len(metadata)]
        dets = _random_case(rng, meta)
        off["inference_detector"] = lambda model, path, d=dets: (d, None)
        want = off["evaluate_image"](str(image_path), meta)
        objs = gs.select_objects(dets, None, meta["tag"], options)
        got = gs.judge(objs, meta, lambda name, found: [_colour_of(b) for b, _ in found], options)
        assert got == (want["correct"], want["reason"]), (meta, dets)
        assert {k: [b.tolist() for b, _ in v] for k, v in objs.items()} == json.loads(want["details"])
        a, b = (np.array([*rng.sample(range(100), 2), *rng.sample(range(100, 200), 2), 1.0]) for _ in range(2))
        assert gs.relative_position(a, b, options["position_threshold"]) == off["relative_position"](
            (a, None), (b, None))
        assert gs.box_iou(a, b) == pytest.approx(off["compute_iou"](a, b))
        verdicts[got[0]] += 1
    assert min(verdicts.values()) > 100  # both outcomes well exercised


def test_colour_crops_paint_outside_the_mask_and_cut_the_box():
    image = Image.new("RGB", (8, 6), (255, 0, 0))
    mask = np.zeros((6, 8), dtype=bool)
    mask[1:3, 2:4] = True
    clf = gs.ColourClassifier(None, None, None, "cpu")
    (crop,) = clf.crops(image, [(np.array([1, 0, 5, 4, 0.9]), mask)])
    assert crop.size == (4, 4)
    px = np.asarray(crop)
    assert tuple(px[1, 1]) == (255, 0, 0) and tuple(px[0, 0]) == (0x99, 0x99, 0x99)
    with pytest.raises(ValueError, match="does not fit"):
        clf.crops(image, [(np.array([0, 0, 2, 2, 1.0]), mask.T)])


def test_colour_classifier_runs_with_a_tiny_open_clip():
    """The colour path on a tiny random open_clip (main environment's open_clip): text weights are the normalised
    mean of the normalised template embeddings; one colour per object."""
    import open_clip
    import torch

    torch.manual_seed(0)
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    net = open_clip.model.CLIP(**cfg).eval()
    tok = open_clip.get_tokenizer("ViT-B-32")
    transform = open_clip.image_transform(32, is_train=False)
    clf = gs.ColourClassifier(net, transform, tok, "cpu")
    w = clf.weights("bench")
    assert w.shape == (16, 10) and torch.allclose(w.norm(dim=0), torch.ones(10))
    texts = [f"a photo of a blue bench", "a photo of a blue-colored bench", "a photo of a blue object"]  # noqa: F541
    e = torch.nn.functional.normalize(net.encode_text(tok(texts)), dim=-1).mean(0)
    assert torch.allclose(w[:, gs.COLORS.index("blue")], e / e.norm(), atol=1e-6)
    image = Image.new("RGB", (40, 40), (0, 0, 255))
    out = clf(image, "bench", [(np.array([0, 0, 20, 20, 1.0]), None), (np.array([10, 10, 40, 40, 1.0]), None)])
    assert len(out) == 2 and set(out) <= set(gs.COLORS)


# --- sampling and workflow --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sample_command_samples_a_caption_file(tiny_zoo, tmp_path):
    meta_file = _smoke_metadata(tmp_path / "meta.jsonl")
    assert main(["geneval", "prompts", "--metadata", str(meta_file), "--out", str(tmp_path / "c.jsonl"),
                 "--images-per-prompt", "2"]) == 0
    out = tmp_path / "samples"
    args = ["sample", "--teacher", "tiny-sana", "--snapshot", str(tiny_zoo["tiny-sana"]), "--captions",
            str(tmp_path / "c.jsonl"), "--resolution-out", "48", "--out", str(out), "--steps", "1", "--batch", "4",
            "--quiet"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in rows] == list(range(12)) and rows[3]["image_id"] == 1
    assert len({r["image_seed"] for r in rows}) == 12 and rows[0]["resolution_out"] == 48
    with Image.open(out / rows[0]["file"]) as im:
        assert im.size == (48, 48)
    assert len({(out / r["file"]).read_bytes() for r in rows[:2]}) == 2  # same prompt, different seeds
    meta = geneval.load_metadata(meta_file)
    assert geneval.make_layout(out, meta, tmp_path / "layout", images_per_prompt=2) == 12
    assert main(["sample", "--teacher", "tiny-sana", "--snapshot", str(tiny_zoo["tiny-sana"]), "--out",
                 str(tmp_path / "x")]) == 2  # neither --reference nor --captions


def test_workflow_geneval_jobs_smoke_and_paper():
    snakemake = str(Path(sys.executable).parent / "snakemake")

    def counts(*args):
        proc = subprocess.run([snakemake, "-n", "--nolock", "--forceall", *args, "geneval"], cwd=REPO,
                              capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        block = proc.stdout.split("Job stats:", 1)[1].split("\n\n", 1)[0]
        return {line.split()[0]: int(line.split()[1]) for line in block.splitlines()[3:] if line.strip()}

    smoke = counts("--configfile=workflow/config/smoke.yaml")
    # 8 smoke models (4 students, 2 teachers, 2 baselines), one shard each; one env, metadata, caption file, models
    assert {k: smoke[k] for k in smoke if k.startswith("geneval")} == {
        "geneval_env": 1, "geneval_smoke_metadata": 1, "geneval_prompts": 1, "geneval_tiny_models": 1,
        "geneval_sample": 8, "geneval_merge": 8, "geneval_score": 8, "geneval": 1}
    paper = counts()
    # 34 paper models (16 students, 8 teachers, 10 baselines) x 16 shards
    assert {k: paper[k] for k in paper if k.startswith("geneval")} == {
        "geneval_env": 1, "geneval_metadata": 1, "geneval_prompts": 1, "geneval_fetch_models": 1,
        "geneval_sample": 544, "geneval_merge": 34, "geneval_score": 34, "geneval": 1}
    # GenEval sampling needs no COCO sampling or evaluation; the reference is built only because the students'
    # distillations score their snapshots on it as they train.
    assert "sample" not in smoke and "evaluate" not in smoke and smoke["coco_reference"] == 1


# --- the GenEval environment (slow; needs the built env) ------------------------------------------------------------

@pytest.fixture(scope="session")
def geneval_env() -> Path:
    """The GenEval environment, built on first use where the workflow keeps it (the first time on a machine: about
    20 minutes of mmcv-full compilation on 2 cores, or a couple with pip's wheel cache; then reused)."""
    from sidrepro.envs import EnvError, ensure_env

    try:
        ensure_env(GENEVAL_SPEC, GENEVAL_ENV)
    except EnvError as exc:
        pytest.skip(f"the GenEval environment cannot be built here: {exc}")
    return GENEVAL_ENV


needs_env = pytest.mark.usefixtures("geneval_env")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, geneval_env) -> Path:
    out = tmp_path_factory.mktemp("geneval-tiny")
    assert main(["geneval", "tiny", "--env", str(GENEVAL_ENV), "--out", str(out), "--favour", "bench"]) == 0
    return out


@pytest.mark.slow
@needs_env
def test_score_end_to_end_with_tiny_models(tiny_models, tmp_path):
    meta_file = _smoke_metadata(tmp_path / "meta.jsonl")
    meta = geneval.load_metadata(meta_file)
    samples = _fake_samples(tmp_path / "s", meta, 2)
    for png in samples.glob("*.png"):  # detector-sized images with some structure
        rng = np.random.default_rng(int(png.stem))
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(png)
    out = tmp_path / "scores" / "m" / "geneval.json"
    assert main(["geneval", "score", "--samples", str(samples), "--metadata", str(meta_file), "--env",
                 str(GENEVAL_ENV), "--detector", str(tiny_models), "--out", str(out), "--images-per-prompt", "2"]) == 0
    rec = json.loads(out.read_text())
    assert rec["metric"] == "geneval" and rec["num_images"] == 12 and rec["num_prompts"] == 6
    assert set(rec["per_task"]) == set(geneval.TASKS)
    assert rec["geneval"] == pytest.approx(sum(rec["per_task"].values()) / 6)
    assert rec["complete"] is False and rec["metadata"]["official"] is False
    assert rec["versions"]["mmdet"] == "2.27.0" and rec["versions"]["mmcv"].startswith("1.7")
    assert rec["versions"]["torch"].startswith("1.12") and rec["versions"]["python"].startswith("3.9")
    assert rec["reference"]["models"] == "tiny-random(seed=0)"
    assert len(rec["reference"]["detector"]["weights_sha256"]) == 64 and rec["code"]["version"]
    results = geneval.read_results(rec["results"])
    assert geneval.summarize(results)["overall"] == rec["geneval"]
    # the favoured class is detected: the single-object bench prompt passes on every image
    assert rec["per_task"]["single_object"] == 1.0


@pytest.mark.slow
@needs_env
@pytest.mark.skipif(not OFFICIAL_EVAL.exists(), reason="set SIDREPRO_GENEVAL_REPO to a djghosh13/geneval checkout")
def test_scorer_equals_genevals_own_code_on_tiny_detector_outputs(tiny_models, tmp_path):
    """In the GenEval environment: the real (tiny) Mask2Former's outputs through GenEval's own evaluate_image and
    through ours give the same verdicts, reasons and kept boxes (colours by our CLIP classifier in both)."""
    meta_file = _smoke_metadata(tmp_path / "meta.jsonl")
    images = []
    for k in range(6):
        path = tmp_path / f"{k}.png"
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    script = f"""
import ast, json, sys
import numpy as np
from PIL import Image, ImageOps
sys.path.insert(0, {str(Path(gs.__file__).parent)!r})
import geneval_scorer as gs
from mmdet.apis import init_detector, inference_detector
tiny = json.load(open({str(tiny_models / 'tiny.json')!r}))
tiny = {{k: {str(tiny_models)!r} + "/" + str(v) for k, v in tiny.items()}}
det = init_detector(tiny["detector_config"], tiny["detector_weights"], device="cpu")
net, tf, tok = gs.load_clip(tiny["clip_model"], tiny["clip_pretrained"], None, "cpu")
clf = gs.ColourClassifier(net, tf, tok, "cpu")
tree = ast.parse(open({str(OFFICIAL_EVAL)!r}).read())
keep = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in
        ("compute_iou", "relative_position", "evaluate", "evaluate_image")]
o = gs.OPTIONS
ns = dict(np=np, json=json, Image=Image, ImageOps=ImageOps, classnames=gs.CLASSNAMES, COLORS=gs.COLORS,
          object_detector=det, inference_detector=inference_detector, THRESHOLD=o["threshold"],
          COUNTING_THRESHOLD=o["counting_threshold"], MAX_OBJECTS=o["max_objects"], NMS_THRESHOLD=o["max_overlap"],
          POSITION_THRESHOLD=o["position_threshold"],
          color_classification=lambda image, found, name: clf(image, name, found))
exec(compile(ast.Module(body=keep, type_ignores=[]), "official", "exec"), ns)
metas = [json.loads(l) for l in open({str(meta_file)!r})]
same = 0
for path in {images!r}:
    bboxes, masks = gs.detect(det, path)
    image = ImageOps.exif_transpose(Image.open(path))
    for meta in metas:
        want = ns["evaluate_image"](path, meta)
        objs = gs.select_objects(bboxes, masks, meta["tag"])
        got = gs.judge(objs, meta, lambda name, found: clf(image, name, found))
        assert got == (want["correct"], want["reason"]), (path, meta, got, want)
        assert json.dumps({{k: [b.tolist() for b, _ in v] for k, v in objs.items()}}) == want["details"]
        same += 1
print(json.dumps({{"same": same, "detections": int(sum(len(b) for b in bboxes))}}))
"""
    proc = subprocess.run([str(GENEVAL_ENV / "bin" / "python"), "-c", script], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["same"] == 36 and res["detections"] > 0


@pytest.mark.slow
@needs_env
def test_smoke_workflow_scores_a_teacher_and_a_baseline_offline(tmp_path):
    """The smoke config's GenEval chain in a copy of the workflow, the built environment reused from where the
    workflow keeps it: smoke metadata -> captions -> tiny models -> sampling -> scoring, no network."""
    import shutil

    shutil.copy(REPO / "Snakefile", tmp_path / "Snakefile")
    shutil.copytree(REPO / "workflow", tmp_path / "workflow")
    targets = [f"work/smoke/scores/{m}/geneval.json" for m in ("teacher--tiny-sana", "baseline--tiny-flux-schnell")]
    snakemake = str(Path(sys.executable).parent / "snakemake")
    proc = subprocess.run([snakemake, "--cores", "2", "--configfile=workflow/config/smoke.yaml", *targets],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for target in targets:
        rec = json.loads((tmp_path / target).read_text())
        assert rec["metric"] == "geneval" and rec["num_images"] == 12 and rec["resolution_out"] == 64
        assert 0 <= rec["geneval"] <= 1 and set(rec["per_task"]) == set(geneval.TASKS)
    assert json.loads((tmp_path / "work/smoke/geneval/env.json").read_text())["spec_sha256"] == json.loads(
        (GENEVAL_ENV / "env.json").read_text())["spec_sha256"]


@pytest.mark.slow
@needs_env
def test_fetch_models_writes_the_record_scoring_reads(tiny_models, tmp_path, monkeypatch):
    """fetch_models with the downloads pointed at local files (no network here): the detector file is sha256-checked
    and the CLIP step runs in the environment; models.json then tells `score` what to load."""
    weights = tiny_models / "tiny_mask2former.pth"
    monkeypatch.setattr(geneval, "DETECTOR_URL", weights.as_uri())
    monkeypatch.setattr(geneval, "DETECTOR_SHA256_PREFIX", geneval.sha256_file(weights)[:8])
    rec = geneval.fetch_models(GENEVAL_ENV, tmp_path / "models",
                               clip_model=str(tiny_models / "sidrepro-tiny-geneval-clip.json"),
                               clip_pretrained=str(tiny_models / "sidrepro-tiny-geneval-clip.pt"))
    assert rec["detector"]["sha256"] == geneval.sha256_file(weights)
    files = geneval.detector_files(tmp_path / "models")
    assert files["detector_weights"] == str(tmp_path / "models" / f"{geneval.DETECTOR_NAME}.pth")
    assert files["detector_config"] is None and files["clip_cache"] == str(tmp_path / "models" / "clip")
    monkeypatch.setattr(geneval, "DETECTOR_SHA256_PREFIX", "00000000")
    (tmp_path / "models" / f"{geneval.DETECTOR_NAME}.pth").unlink()
    with pytest.raises(geneval.GenEvalError, match="refusing it"):
        geneval.fetch_models(GENEVAL_ENV, tmp_path / "models")
