"""Baselines sample through their own diffusers pipelines, LoRAs included (tiny zoo stand-ins)."""

from __future__ import annotations

import pytest
import torch

from sidrepro.teachers.baselines import load_baseline, sample_baseline
from sidrepro.teachers.registry import BASELINES, BaselineEntry

PROMPTS = ["a cat on a mat", "a lighthouse at dusk"]


def _sample(pipe, entry, seed=0, **kw):
    return sample_baseline(pipe, entry, PROMPTS, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("name", ["tiny-sana-sprint-1step", "tiny-sana-sprint-4step", "tiny-flux-schnell"])
def test_baseline_samples_images(name, tiny_zoo):
    entry = BASELINES[name]
    pipe = load_baseline(entry, tiny_zoo[entry.hub_id])
    a, b = _sample(pipe, entry), _sample(pipe, entry)
    assert a.shape == (2, 3, 64, 64) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)  # seeded
    assert not torch.equal(a, _sample(pipe, entry, seed=1))


def test_flux_lora_changes_the_base_model(tiny_zoo):
    entry = BASELINES["tiny-flux-lora"]
    with_lora = load_baseline(entry, tiny_zoo["tiny-flux"], tiny_zoo["tiny-flux-lora"])
    base = load_baseline(BaselineEntry("base", "flux", "tiny-flux", steps=4, guidance=3.5, resolution=64),
                         tiny_zoo["tiny-flux"])
    lat_lora = _sample(with_lora, entry, output_type="latent")
    lat_base = _sample(base, entry, output_type="latent")
    assert (lat_lora - lat_base).abs().max() > 1e-3
    with pytest.raises(ValueError, match="needs its LoRA"):
        load_baseline(entry, tiny_zoo["tiny-flux"])


def test_peft_adapter_baseline(tiny_zoo, tmp_path):
    """Flash SD3 ships a PEFT adapter for the transformer; a tiny one built here loads the same way."""
    from diffusers import SD3Transformer2DModel
    from peft import LoraConfig, get_peft_model

    net = SD3Transformer2DModel.from_pretrained(tiny_zoo["tiny-sd3"], subfolder="transformer")
    peft_net = get_peft_model(net, LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"],
                                              init_lora_weights=False))
    peft_net.save_pretrained(tmp_path / "adapter")
    entry = BaselineEntry("tiny-flash-sd3", "sd3", "tiny-sd3", steps=4, guidance=0.0, resolution=64,
                          lora_id="tiny-flash", lora_format="peft", extra={"max_sequence_length": 77})
    plain = BaselineEntry("tiny-sd3-plain", "sd3", "tiny-sd3", steps=4, guidance=0.0, resolution=64,
                          extra={"max_sequence_length": 77})
    a = _sample(load_baseline(entry, tiny_zoo["tiny-sd3"], tmp_path / "adapter"), entry, output_type="latent")
    b = _sample(load_baseline(plain, tiny_zoo["tiny-sd3"]), plain, output_type="latent")
    assert a.shape == b.shape and (a - b).abs().max() > 1e-4


def test_registry_records_every_table_baseline():
    hub = {n: b for n, b in BASELINES.items() if not b.zoo}
    assert {"flash-sd3", "sd3.5-medium-turbo", "sd3.5-large-turbo", "flux-schnell", "flux-turbo-alpha",
            "hyper-flux"} <= set(hub)
    assert {b.steps for n, b in hub.items() if n.startswith("sana-sprint")} == {1, 4}
    assert hub["sd3.5-medium-turbo"].steps == 8 and hub["flux-schnell"].steps == 4
    with pytest.raises(ValueError, match="unknown family"):
        BaselineEntry("x", "sdxl", "a/b", steps=4, guidance=0.0)
