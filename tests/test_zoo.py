"""The tiny teacher zoo: real diffusers/transformers classes in the hub layout, loadable and runnable offline.

One zoo is built per session (``tiny_zoo`` in conftest.py); each entry is loaded by its pipeline class with
``from_pretrained(folder)`` and run for two steps at 64x64, with the families' real text lengths.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from sidrepro.teachers import zoo
from sidrepro.teachers.tokenizers import caption_corpus, gemma_tokenizer, t5_tokenizer

PROMPT = "A photo of a cat sitting on a red chair, in the style of Van Gogh."
SIZE = 64  # image side; every zoo VAE compresses by 8

# name -> (pipeline class, call kwargs, latent shape for one 64x64 image, encoder tokens the transformer sees)
PIPELINES: dict[str, tuple[str, dict[str, Any], tuple[int, ...], int]] = {
    "tiny-sana": ("SanaPipeline", {"use_resolution_binning": False, "max_sequence_length": 300}, (1, 32, 8, 8), 300),
    "tiny-sana-sprint-teacher": ("SanaPipeline", {"use_resolution_binning": False, "max_sequence_length": 300},
                                 (1, 32, 8, 8), 300),
    "tiny-sana-sprint": ("SanaSprintPipeline", {"use_resolution_binning": False, "max_sequence_length": 300},
                         (1, 32, 8, 8), 300),
    # SD3: 77 CLIP tokens and 77 T5 tokens, concatenated along the sequence.
    "tiny-sd3": ("StableDiffusion3Pipeline", {"max_sequence_length": 77}, (1, 16, 8, 8), 154),
    "tiny-sd35": ("StableDiffusion3Pipeline", {"max_sequence_length": 77}, (1, 16, 8, 8), 154),
    # FLUX: latents are packed 2x2 -> (B, 16 tokens, 64 channels); 512 T5 tokens.
    "tiny-flux": ("FluxPipeline", {"max_sequence_length": 512}, (1, 16, 64), 512),
    "tiny-flux-schnell": ("FluxPipeline", {"max_sequence_length": 512, "guidance_scale": 0.0}, (1, 16, 64), 512),
}


def _load(name: str, folder: Path) -> Any:
    import diffusers

    pipe = getattr(diffusers, PIPELINES[name][0]).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe: Any, name: str, **extra: Any) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Two steps at 64x64, returning the latents and what the transformer received at each call."""
    calls: list[dict[str, Any]] = []

    def record(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        calls.append({k: kwargs.get(k) for k in ("timestep", "guidance", "encoder_hidden_states")})

    handle = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        latents = pipe(PROMPT, num_inference_steps=2, height=SIZE, width=SIZE, output_type="latent",
                       generator=torch.Generator().manual_seed(0), **{**PIPELINES[name][1], **extra}).images
    finally:
        handle.remove()
    return latents, calls


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_zoo_lists_every_entry(tiny_zoo: dict[str, Path]) -> None:
    assert list(tiny_zoo) == list(zoo.ZOO)
    for name, folder in tiny_zoo.items():
        assert folder == folder.parent / name and folder.is_dir()
        marker = json.loads((folder / "zoo.json").read_text())
        assert marker["name"] == name and marker["seed"] == 0
        assert {"torch", "diffusers", "transformers", "tokenizers"} <= set(marker["versions"])
        assert zoo.is_complete(folder, name, 0)
    # no temporary build folders left behind
    assert sorted(p.name for p in next(iter(tiny_zoo.values())).parent.iterdir()) == sorted(zoo.ZOO)


@pytest.mark.parametrize("name", list(PIPELINES))
def test_entry_loads_and_generates(tiny_zoo: dict[str, Path], name: str) -> None:
    from diffusers import DiffusionPipeline

    folder = tiny_zoo[name]
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == PIPELINES[name][0]
    assert type(DiffusionPipeline.from_pretrained(folder)).__name__ == PIPELINES[name][0]
    assert all(p.suffix != ".bin" for p in folder.rglob("*"))  # safetensors only
    pipe = _load(name, folder)
    latents, calls = _generate(pipe, name)
    assert tuple(latents.shape) == PIPELINES[name][2]
    assert torch.isfinite(latents).all()
    assert len(calls) == 2
    # the real text lengths reach the transformer (SANA: 300 tokens after the complex-human instruction prefix)
    assert calls[0]["encoder_hidden_states"].shape[1] == PIPELINES[name][3]


def test_time_and_guidance_conventions(tiny_zoo: dict[str, Path]) -> None:
    """SANA sees 1000·t, the Sprint teacher raw t in [0, 1], the Sprint student flow time and a scaled guidance
    embedding; FLUX.1-dev gets a guidance value, schnell none."""
    def first_call(name: str) -> dict[str, Any]:
        return _generate(_load(name, tiny_zoo[name]), name)[1][0]

    assert float(first_call("tiny-sana")["timestep"].max()) > 900
    teacher_t = first_call("tiny-sana-sprint-teacher")["timestep"]
    assert 0.9 < float(teacher_t.max()) <= 1.0
    sprint = first_call("tiny-sana-sprint")
    assert float(sprint["timestep"].max()) == pytest.approx(1.0, abs=1e-3)
    assert float(sprint["guidance"][0]) == pytest.approx(4.5 * 0.1)  # default guidance x guidance_embeds_scale
    assert float(first_call("tiny-flux")["guidance"][0]) == pytest.approx(3.5)
    assert first_call("tiny-flux-schnell")["guidance"] is None


def test_sana_encodes_300_tokens_with_instruction(tiny_zoo: dict[str, Path]) -> None:
    pipe = _load("tiny-sana", tiny_zoo["tiny-sana"])
    instruction = inspect.signature(type(pipe).__call__).parameters["complex_human_instruction"].default
    assert len(pipe.tokenizer.encode("\n".join(instruction))) > 100  # the prefix is long, as with the real Gemma
    embeds, mask, _, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=300,
                                            complex_human_instruction=instruction)
    assert embeds.shape == (1, 300, pipe.text_encoder.config.hidden_size) and mask.shape == (1, 300)
    assert torch.isfinite(embeds).all()


def test_configs_follow_the_real_families(tiny_zoo: dict[str, Path]) -> None:
    def cfg(name: str, part: str) -> dict[str, Any]:
        sub = "scheduler/scheduler_config.json" if part == "scheduler" else f"{part}/config.json"
        return json.loads((tiny_zoo[name] / sub).read_text())

    sana = cfg("tiny-sana", "scheduler")
    assert sana["_class_name"] == "DPMSolverMultistepScheduler"
    assert (sana["flow_shift"], sana["use_flow_sigmas"], sana["prediction_type"]) == (3.0, True, "flow_prediction")
    assert cfg("tiny-sana", "transformer")["timestep_scale"] == 1.0
    teacher = cfg("tiny-sana-sprint-teacher", "transformer")
    assert teacher["timestep_scale"] == 0.001 and teacher["guidance_embeds"] is False
    assert cfg("tiny-sana-sprint-teacher", "scheduler") == sana
    assert cfg("tiny-sana-sprint", "transformer")["guidance_embeds"] is True
    assert cfg("tiny-sana-sprint", "scheduler")["_class_name"] == "SCMScheduler"
    assert cfg("tiny-sana", "vae")["_class_name"] == "AutoencoderDC"

    sd3, sd35 = cfg("tiny-sd3", "transformer"), cfg("tiny-sd35", "transformer")
    assert sd3["qk_norm"] is None and not sd3["dual_attention_layers"]
    assert sd35["qk_norm"] == "rms_norm" and sd35["dual_attention_layers"]
    assert cfg("tiny-sd3", "scheduler")["shift"] == 3.0
    vae = cfg("tiny-sd3", "vae")
    assert (vae["latent_channels"], vae["scaling_factor"], vae["shift_factor"]) == (16, 1.5305, 0.0609)

    assert cfg("tiny-flux", "transformer")["guidance_embeds"] is True
    assert cfg("tiny-flux-schnell", "transformer")["guidance_embeds"] is False
    dev, schnell = cfg("tiny-flux", "scheduler"), cfg("tiny-flux-schnell", "scheduler")
    assert dev["use_dynamic_shifting"] is True
    assert (dev["base_shift"], dev["max_shift"], dev["base_image_seq_len"], dev["max_image_seq_len"]) == (
        0.5, 1.15, 256, 4096)
    assert schnell["use_dynamic_shifting"] is False and schnell["shift"] == 1.0
    vae = cfg("tiny-flux", "vae")
    assert (vae["latent_channels"], vae["scaling_factor"], vae["shift_factor"]) == (16, 0.3611, 0.1159)


def test_text_encoder_vocabularies_match_tokenizers(tiny_zoo: dict[str, Path]) -> None:
    from transformers import AutoConfig, AutoTokenizer

    pairs = [("tiny-sana", "tokenizer", "text_encoder"), ("tiny-sd3", "tokenizer", "text_encoder"),
             ("tiny-sd3", "tokenizer_2", "text_encoder_2"), ("tiny-sd3", "tokenizer_3", "text_encoder_3"),
             ("tiny-flux", "tokenizer", "text_encoder"), ("tiny-flux", "tokenizer_2", "text_encoder_2")]
    for name, tok, enc in pairs:
        tokenizer = AutoTokenizer.from_pretrained(tiny_zoo[name] / tok)
        assert len(tokenizer) == AutoConfig.from_pretrained(tiny_zoo[name] / enc).vocab_size, (name, tok)


def test_clip_tokenizers_match_open_clip(tiny_zoo: dict[str, Path]) -> None:
    from open_clip.tokenizer import SimpleTokenizer, tokenize
    from transformers import CLIPTokenizer

    assert {p.name for p in (tiny_zoo["tiny-sd3"] / "tokenizer").iterdir()} >= {"vocab.json", "merges.txt"}
    simple = SimpleTokenizer()
    prompts = [PROMPT, "An astronaut riding a horse on the moon!!  It's 3D & 8k, café-style", "a"]
    for folder in (tiny_zoo["tiny-sd3"] / "tokenizer", tiny_zoo["tiny-flux"] / "tokenizer"):
        tok = CLIPTokenizer.from_pretrained(folder)
        assert tok.model_max_length == 77
        for p in prompts:
            assert tok(p).input_ids == [simple.sot_token_id, *simple.encode(p), simple.eot_token_id]
    # SD3's bigG tokenizer pads with "!" (id 0), as open_clip.tokenize does: padded ids are identical...
    tok2 = CLIPTokenizer.from_pretrained(tiny_zoo["tiny-sd3"] / "tokenizer_2")
    plain = [p.replace("!", ".") for p in prompts]
    ids = tok2(plain, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ids, tokenize(plain))
    # ...except that "!" in a prompt becomes the special pad token, as with the real SD3/SDXL tokenizer_2
    # (diffusers issue #4153): "!!" is [0, 0] there, 748 in open_clip.
    assert tok2("wow!!").input_ids[2:4] == [0, 0] and simple.encode("wow!!")[1] == 748


def test_trained_tokenizers_have_the_real_layouts() -> None:
    t5 = t5_tokenizer()
    assert t5.convert_tokens_to_ids(["<pad>", "</s>", "<unk>"]) == [0, 1, 2]
    assert t5.convert_tokens_to_ids("<extra_id_0>") == len(t5) - 1
    ids = t5(PROMPT).input_ids
    assert ids[-1] == 1 and t5.unk_token_id not in ids
    gemma = gemma_tokenizer()
    assert gemma.convert_tokens_to_ids(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<0x00>"]) == [0, 1, 2, 3, 4, 5]
    ids = gemma("Crème brûlée, 😀").input_ids
    assert ids[0] == 2 and gemma.unk_token_id not in ids  # <bos> first; byte fallback, never <unk>
    assert gemma.decode(ids, skip_special_tokens=True) == "Crème brûlée, 😀"
    assert len(caption_corpus()) > 1000
    # training is deterministic within a process too (the unigram trainer sums in hash-map order)
    assert t5_tokenizer().backend_tokenizer.to_str() == t5.backend_tokenizer.to_str()


def test_flux_lora_changes_the_output(tiny_zoo: dict[str, Path]) -> None:
    from safetensors import safe_open

    lora = tiny_zoo["tiny-flux-lora"]
    with safe_open(lora / "pytorch_lora_weights.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    pipe = _load("tiny-flux", tiny_zoo["tiny-flux"])
    before, _ = _generate(pipe, "tiny-flux")
    pipe.load_lora_weights(lora)
    after, _ = _generate(pipe, "tiny-flux")
    assert torch.isfinite(after).all()
    assert (after - before).abs().max() > 1e-3


def test_build_is_deterministic_and_seeded(tiny_zoo: dict[str, Path], tmp_path: Path) -> None:
    name = "tiny-sana-sprint"
    # a caller's default dtype and RNG state neither change the files nor are changed by the build
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    torch.set_default_dtype(torch.float64)
    try:
        again = zoo.build_model(name, tmp_path / "same", seed=0)
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(torch.float32)
    assert torch.equal(torch.rand(3), expected_draw)
    assert again == tmp_path / "same" / name
    assert _hashes(again) == _hashes(tiny_zoo[name])  # byte-identical, tokenizer and configs included
    other = _hashes(zoo.build_model(name, tmp_path / "other", seed=1))
    reference = _hashes(tiny_zoo[name])
    weights = [k for k in reference if k.endswith(".safetensors")]
    assert len(weights) == 3 and all(other[k] != reference[k] for k in weights)
    assert other["tokenizer/tokenizer.json"] == reference["tokenizer/tokenizer.json"]  # tokenizers take no seed


def test_families_share_components_like_the_real_ones(tiny_zoo: dict[str, Path]) -> None:
    sd3, sd35 = _hashes(tiny_zoo["tiny-sd3"]), _hashes(tiny_zoo["tiny-sd35"])
    for part in ("text_encoder", "text_encoder_2", "text_encoder_3", "vae"):
        key = next(k for k in sd3 if k.startswith(part + "/") and k.endswith(".safetensors"))
        assert sd3[key] == sd35[key]
    key = "transformer/diffusion_pytorch_model.safetensors"
    assert sd3[key] != sd35[key]
    flux = _hashes(tiny_zoo["tiny-flux"])
    assert flux["text_encoder_2/model.safetensors"] == sd3["text_encoder_3/model.safetensors"]  # one T5-XXL
    assert flux["vae/diffusion_pytorch_model.safetensors"] != sd3["vae/diffusion_pytorch_model.safetensors"]


def test_existing_entries_are_kept_unless_overwrite(tmp_path: Path) -> None:
    name = "tiny-flux-lora"  # the quickest entry to build
    folder = zoo.build_zoo(tmp_path, names=[name])[name]
    marker = folder / "zoo.json"
    stamp = marker.stat().st_mtime_ns
    (folder / "extra.txt").write_text("kept")
    assert zoo.build_zoo(tmp_path, names=name)[name] == folder  # a single name works too
    assert (folder / "extra.txt").exists() and marker.stat().st_mtime_ns == stamp
    zoo.build_zoo(tmp_path, names=[name], overwrite=True)
    assert not (folder / "extra.txt").exists() and zoo.is_complete(folder, name, 0)
    # an entry without its marker (an interrupted copy) is rebuilt, as is one from another seed
    marker.unlink()
    zoo.build_zoo(tmp_path, names=[name])
    assert zoo.is_complete(folder, name, 0)
    zoo.build_zoo(tmp_path, names=[name], seed=3)
    assert zoo.is_complete(folder, name, 3)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary or old folders left


def test_unknown_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tiny-sana, tiny-sana-sprint-teacher"):
        zoo.build_zoo(tmp_path, names=["tiny-sana", "sana-huge"])
    assert not any(tmp_path.iterdir())  # refused before anything was built
    with pytest.raises(ValueError, match="valid names"):
        zoo.build_model("nope", tmp_path)
