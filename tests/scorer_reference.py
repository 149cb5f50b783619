"""Reference scores for tests/test_scorers.py, computed with each scorer's own published code path, one image at a
time, in a scorer environment (run as ``ENV/bin/python -I scorer_reference.py NAME REQUEST.json ANSWER.json``).

- ``hpsv2`` (hpsv2 env): ``hpsv2.img_score.score(path, caption, cp=checkpoint)``, with the module's model cache
  filled by the package's ``create_model_and_transforms`` called with ``initialize_model``'s arguments for the tiny
  config (the real call would download ViT-H-14 weights that the checkpoint overwrites anyway).
- ``image_reward`` (image_reward env): ``ImageReward.load(checkpoint, med_config=...)`` and ``model.score(caption,
  path)``; the BERT tokenizer and, for the tiny model, the ViT size come from local files (the runner's patch).
- ``aesthetic`` (image_reward env): ImageReward's own ``AestheticScore`` (improved-aesthetic-predictor on OpenAI
  ``clip``), as ``ImageReward.load_score("Aesthetic")`` builds it, with ``clip.load`` reading the tiny weights file
  through clip's own ``build_model`` and ``_transform``.
- ``pickscore`` (image_reward env, transformers 4.36): the model card's code (``AutoProcessor``, ``AutoModel``,
  normalised features, ``logit_scale.exp() * text @ image.T``), before the softmax.
"""

import importlib.util
import json
import sys
import tempfile
from pathlib import Path

RUNNERS = Path(__file__).resolve().parents[1] / "sidrepro" / "evaluate" / "scorers"


def _runner(name):
    spec = importlib.util.spec_from_file_location(name, RUNNERS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hpsv2(req):
    import hpsv2.img_score as img_score
    from hpsv2.src.open_clip import create_model_and_transforms
    from hpsv2.src.open_clip.factory import add_model_config

    add_model_config(req["config"])
    model, _, preprocess_val = create_model_and_transforms(
        req["model_name"], None, precision="amp", device=img_score.device, jit=False, force_quick_gelu=False,
        force_custom_text=False, force_patch_dropout=False, force_image_size=None, pretrained_image=False,
        image_mean=None, image_std=None, light_augmentation=True, aug_cfg={}, output_dict=True,
        with_score_predictor=False, with_region_predictor=False)
    img_score.model_dict["model"] = model
    img_score.model_dict["preprocess_val"] = preprocess_val
    return [float(img_score.score(it["file"], it["caption"], cp=req["checkpoint"])[0]) for it in req["items"]]


def image_reward(req):
    import ImageReward as RM

    vit = json.loads(Path(req["vit"]).read_text()) if req.get("vit") else None
    _runner("env_image_reward").patch_package(req["tokenizer"], vit)
    model = RM.load(req["checkpoint"], device="cpu", med_config=req["med_config"])
    return [float(model.score(it["caption"], it["file"])) for it in req["items"]]


def aesthetic(req):
    import clip
    import ImageReward  # noqa: F401  (the package's __init__ binds the class over the module's name)
    import torch

    module = sys.modules["ImageReward.models.AestheticScore"]
    def load(name, device="cpu", jit=False, download_root=None):
        # clip.load's own non-JIT branch, for a plain state-dict file (the real ViT-L-14.pt is a TorchScript archive
        # that clip.load reads first; on a plain file that read leaves the handle at EOF under torch 2.14).
        model = clip.model.build_model(torch.load(req["clip"], map_location="cpu")).to(device)
        if str(device) == "cpu":
            model.float()
        return model, clip.clip._transform(model.visual.input_resolution)

    module.clip.load = load
    with tempfile.TemporaryDirectory() as root:
        model = module.AestheticScore(download_root=root, device="cpu")
    model.mlp.load_state_dict(torch.load(req["mlp"], map_location="cpu"), strict=False)
    model.eval()
    return [float(model.score(it["caption"], it["file"])) for it in req["items"]]


def pickscore(req):
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    processor = AutoProcessor.from_pretrained(req["processor"])
    model = AutoModel.from_pretrained(req["model"]).eval()
    out = []
    for it in req["items"]:
        image_inputs = processor(images=[Image.open(it["file"])], padding=True, truncation=True, max_length=77,
                                 return_tensors="pt")
        text_inputs = processor(text=it["caption"], padding=True, truncation=True, max_length=77,
                                return_tensors="pt")
        with torch.no_grad():
            image_embs = model.get_image_features(**image_inputs)
            image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
            text_embs = model.get_text_features(**text_inputs)
            text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
            scores = model.logit_scale.exp() * (text_embs @ image_embs.T)[0]
        out.append(float(scores[0]))
    return out


if __name__ == "__main__":
    name, request, answer = sys.argv[1:]
    result = {"hpsv2": hpsv2, "image_reward": image_reward, "aesthetic": aesthetic,
              "pickscore": pickscore}[name](json.loads(Path(request).read_text()))
    Path(answer).write_text(json.dumps(result))
