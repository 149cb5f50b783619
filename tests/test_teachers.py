"""Teacher adapters against diffusers' own pipelines, on the tiny zoo (real classes, random weights)."""

from __future__ import annotations

import json

import pytest
import torch

from sidrepro.teachers.base import Conditioning
from sidrepro.teachers.load import load_teacher
from sidrepro.teachers.registry import get_teacher

RES = 64
PROMPTS = ["a red cube on a wooden table", "two cats asleep in the sun"]
FAMILY_ENTRIES = ["tiny-sana", "tiny-sana-sprint-teacher", "tiny-sd3", "tiny-sd35", "tiny-flux"]
PIPELINES = {"sana": "SanaPipeline", "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}
TOL = 1e-4


@pytest.fixture(scope="module")
def zoo_dir(tiny_zoo):
    return next(iter(tiny_zoo.values())).parent


@pytest.fixture(scope="module")
def adapters(zoo_dir):
    out = {}
    for name in FAMILY_ENTRIES:
        ad = load_teacher(name, zoo_dir / name)
        out[name] = (ad, ad.load_transformer().eval())
    return out


def _pipeline(name, folder):
    import diffusers

    pipe = getattr(diffusers, PIPELINES[get_teacher(name).family]).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pipeline_latents(name, pipe, adapter, noise, steps, guidance):
    """Run the family's diffusers pipeline from ``noise`` and return its final latents ``(B, C, H, W)``."""
    family = get_teacher(name).family
    kw = dict(prompt=PROMPTS, num_inference_steps=steps, guidance_scale=guidance, height=RES, width=RES,
              output_type="latent")
    if family == "sana":
        return pipe(latents=noise.clone(), use_resolution_binning=False, **kw).images
    if family == "sd3":
        return pipe(latents=noise.clone(), max_sequence_length=77, **kw).images
    b, c, h, w = noise.shape
    packed = pipe._pack_latents(noise.clone(), b, c, h, w)
    out = pipe(latents=packed, max_sequence_length=512, **kw).images
    return pipe._unpack_latents(out, RES, RES, pipe.vae_scale_factor)


@pytest.mark.parametrize("name", FAMILY_ENTRIES)
def test_sampler_matches_diffusers_pipeline(name, zoo_dir, adapters):
    adapter, net = adapters[name]
    pipe = _pipeline(name, zoo_dir / name)
    noise = adapter.initial_noise(len(PROMPTS), RES, generator=torch.Generator().manual_seed(3))
    guidance = get_teacher(name).sample_guidance
    ref = _pipeline_latents(name, pipe, adapter, noise, 4, guidance)
    ours = adapter.sample(net, adapter.encode_prompts(PROMPTS), steps=4, guidance=guidance, noise=noise)
    assert ours.shape == ref.shape == noise.shape
    assert (ours - noise).abs().max() > 1e-2  # the sampler moved
    assert (ours - ref.float()).abs().max().item() <= TOL


@pytest.mark.parametrize("name", FAMILY_ENTRIES)
def test_velocity_at_guidance_one_is_the_transformers_own_call(name, adapters):
    adapter, net = adapters[name]
    cond = adapter.encode_prompts(PROMPTS)
    g = torch.Generator().manual_seed(0)
    x = adapter.initial_noise(2, RES, generator=g)
    t = torch.tensor([0.3, 0.8])
    v, h = adapter.velocity(net, x, t, cond, scale=1.0)
    family = get_teacher(name).family
    with torch.no_grad():
        if family == "sana":
            ref = net(x, encoder_hidden_states=cond.embeds, encoder_attention_mask=cond.mask,
                      timestep=t * get_teacher(name).time_scale, return_dict=False)[0]
        elif family == "sd3":
            ref = net(hidden_states=x, timestep=t * 1000, encoder_hidden_states=cond.embeds,
                      pooled_projections=cond.pooled, return_dict=False)[0]
        else:
            from diffusers import FluxPipeline

            b, c, hh, ww = x.shape
            ref = net(hidden_states=FluxPipeline._pack_latents(x, b, c, hh, ww), timestep=t,
                      guidance=torch.full((b,), 1.0), pooled_projections=cond.pooled,
                      encoder_hidden_states=cond.embeds, txt_ids=torch.zeros(cond.embeds.shape[1], 3),
                      img_ids=FluxPipeline._prepare_latent_image_ids(b, hh // 2, ww // 2, x.device, x.dtype),
                      return_dict=False)[0]
            ref = FluxPipeline._unpack_latents(ref, RES, RES, adapter.vae_scale_factor)
    assert h is None
    assert torch.equal(v, ref)


@pytest.mark.parametrize("name", FAMILY_ENTRIES)
def test_guided_velocity_and_features(name, adapters):
    """CFG is one batched pass with the unconditional half first; the pooled features come from the conditional
    half and equal those of a plain conditional pass (FLUX: same guidance embedding)."""
    adapter, net = adapters[name]
    cond = adapter.encode_prompts(PROMPTS)
    x = adapter.initial_noise(2, RES, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.5, 0.9])
    v, h = adapter.velocity(net, x, t, cond, scale=4.5, features=True)
    embed = adapter.guidance_embed(4.5)
    v_c, h_c = adapter.forward(net, x, adapter.network_time(t), cond, guidance_embed=embed, features=True)
    v_u, _ = adapter.forward(net, x, adapter.network_time(t), adapter.empty(2), guidance_embed=embed)
    assert h.shape == (2, net.proj_out.in_features)
    torch.testing.assert_close(h, h_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v, v_u + 4.5 * (v_c - v_u), atol=1e-5, rtol=1e-5)


def test_prompt_encoding_shapes_and_sana_instruction(adapters):
    sana, _ = adapters["tiny-sana"]
    cond = sana.encode_prompts(["", "a cat"])
    assert cond.embeds.shape[:2] == (2, 300) and cond.mask.shape == (2, 300)
    # The empty prompt gets the uncached empty embedding (no instruction); the other prompt has the instruction.
    empty = sana.empty(1)
    assert torch.equal(cond.embeds[0], empty.embeds[0]) and torch.equal(cond.mask[0], empty.mask[0])
    plain, _ = sana.pipe._get_gemma_prompt_embeds(["a cat"], device="cpu", dtype=torch.float32,
                                                           max_sequence_length=300, complex_human_instruction=False)
    assert not torch.allclose(cond.embeds[1], plain[0])
    sd3, _ = adapters["tiny-sd3"]
    c = sd3.encode_prompts(PROMPTS)
    assert c.embeds.shape[1] == 154 and c.pooled.shape[0] == 2  # 77 CLIP + 77 T5 tokens
    flux, _ = adapters["tiny-flux"]
    c = flux.encode_prompts(PROMPTS)
    assert c.embeds.shape[1] == 512 and c.pooled.shape[0] == 2


@pytest.mark.parametrize("name", FAMILY_ENTRIES)
def test_decode_matches_pipeline_images(name, zoo_dir, adapters):
    adapter, net = adapters[name]
    pipe = _pipeline(name, zoo_dir / name)
    noise = adapter.initial_noise(2, RES, generator=torch.Generator().manual_seed(5))
    lat = adapter.sample(net, adapter.encode_prompts(PROMPTS), steps=2, noise=noise)
    family = get_teacher(name).family
    kw = dict(prompt=PROMPTS, num_inference_steps=2, guidance_scale=get_teacher(name).sample_guidance,
              height=RES, width=RES, output_type="pt")
    if family == "sana":
        img = pipe(latents=noise.clone(), use_resolution_binning=False, **kw).images
    elif family == "sd3":
        img = pipe(latents=noise.clone(), max_sequence_length=77, **kw).images
    else:
        b, c, h, w = noise.shape
        img = pipe(latents=pipe._pack_latents(noise.clone(), b, c, h, w), max_sequence_length=512, **kw).images
    ours = (adapter.decode(lat) + 1) / 2  # pipelines return [0, 1]
    assert ours.shape == img.shape == (2, 3, RES, RES)
    assert (ours - img).abs().max().item() <= TOL
    z = adapter.encode(adapter.decode(lat), generator=torch.Generator().manual_seed(0))
    assert z.shape == lat.shape


@pytest.mark.parametrize("name", FAMILY_ENTRIES)
def test_round_trip_save_and_load(name, zoo_dir, adapters, tmp_path):
    adapter, net = adapters[name]
    pipe = _pipeline(name, zoo_dir / name)
    pipe.save_pretrained(tmp_path / name, safe_serialization=True)
    again = load_teacher(name, tmp_path / name)
    net2 = again.load_transformer()
    noise = adapter.initial_noise(2, RES, generator=torch.Generator().manual_seed(7))
    a = adapter.sample(net, adapter.encode_prompts(PROMPTS), steps=2, noise=noise)
    b = again.sample(net2, again.encode_prompts(PROMPTS), steps=2, noise=noise)
    assert torch.equal(a, b)


def test_flux_guidance_conventions(zoo_dir):
    from dataclasses import replace

    entry = get_teacher("tiny-flux")
    both = load_teacher(entry, zoo_dir / "tiny-flux")
    embed_only = load_teacher(replace(entry, flux_guidance="embed_only"), zoo_dir / "tiny-flux")
    assert (both.guidance_embed(4.5), both.cfg_scale(4.5)) == (4.5, 4.5)
    assert (embed_only.guidance_embed(4.5), embed_only.cfg_scale(4.5)) == (4.5, 1.0)
    assert both.guidance_embed(1.0) == 1.0  # the generator's call


def test_conditioning_helpers():
    a = Conditioning(torch.zeros(1, 3, 4), torch.ones(1, 3, dtype=torch.long))
    assert len(a.expand(5)) == 5
    c = Conditioning.cat([a, a.expand(2)])
    assert c.embeds.shape == (3, 3, 4) and c.mask.shape == (3, 3)
    with pytest.raises(ValueError, match="with and without"):
        Conditioning.cat([a, Conditioning(torch.zeros(1, 3, 4))])


def test_bad_snapshot_and_wrong_sana_checkpoint(zoo_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="sidrepro fetch"):
        load_teacher("sana-0.6b", tmp_path / "nowhere")
    import shutil

    shutil.copytree(zoo_dir / "tiny-sana", tmp_path / "broken")
    (tmp_path / "broken" / "transformer" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        load_teacher("tiny-sana", tmp_path / "broken")
    # A guidance-embedding SANA transformer (the Sprint student) is not a valid SiD teacher.
    shutil.copytree(zoo_dir / "tiny-sana-sprint", tmp_path / "student")
    with pytest.raises(ValueError, match="guidance_embeds"):
        load_teacher("tiny-sana-sprint-teacher", tmp_path / "student")
    cfg = json.loads((zoo_dir / "tiny-sana" / "model_index.json").read_text())
    assert cfg["_class_name"] == "SanaPipeline"
