"""ImageReward runner, executed by the python of the image_reward environment (workflow/envs/image_reward.txt),
never imported by sidrepro: it imports only the standard library, torch, PIL and the ``ImageReward`` package
(``image-reward`` 1.5, which pins timm 0.6.13 and fairscale 0.4.13 and needs transformers 4.x for its BLIP code).

    python -I env_image_reward.py score REQUEST.json ANSWER.json
    python -I env_image_reward.py tiny REQUEST.json ANSWER.json

``score`` loads the model as ``ImageReward.load`` does (``ImageReward(med_config)``, then the checkpoint with
``load_state_dict(strict=False)``; we also refuse a checkpoint that leaves a parameter missing) and scores as
``ImageReward.score`` does: the caption through BLIP's BERT tokenizer (``padding='max_length', truncation=True,
max_length=35``), the image through ``model.preprocess`` (PIL bicubic resize of the short side to 224, centre crop,
RGB, OpenAI mean/std), the BLIP ViT-L image embeddings as cross-attention input of the BLIP text encoder, the
[CLS] feature through the MLP, then ``(reward - 0.16717) / 1.03334``: the raw ImageReward (about 0.6-1.3 for good
models). Images are batched; the batch only changes float rounding.

Two things the package fetches by itself are given as local files instead: the BERT tokenizer
(``BertTokenizer.from_pretrained('bert-base-uncased')`` in ``blip.init_tokenizer``) is read from the tokenizer
folder the request names, and for a tiny model (``vit.json`` in the request) ``create_vit`` builds the package's
own ``VisionTransformer`` at that tiny size instead of ViT-L. ``tiny`` writes such a model: a tiny WordPiece
vocabulary, a 1-layer ``med_config.json`` (hidden size 768, which the package's ``MLP(768)`` fixes) and the
random weights of ``ImageReward`` itself.
"""

import json
import string
import sys
from pathlib import Path

PACKAGES = ("image-reward", "torch", "torchvision", "timm", "fairscale", "transformers", "tokenizers", "pillow",
            "numpy")
TINY_VIT = {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 16}


def _versions():
    from importlib import metadata

    out = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def patch_package(tokenizer_dir, vit=None):
    """Point the package's two downloads at local files (see the module docstring)."""
    from ImageReward.models.BLIP import blip, blip_pretrain
    from transformers import BertTokenizer

    def init_tokenizer():
        tokenizer = BertTokenizer.from_pretrained(tokenizer_dir)
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        tokenizer.enc_token_id = tokenizer.additional_special_tokens_ids[0]
        return tokenizer

    blip.init_tokenizer = init_tokenizer
    blip_pretrain.init_tokenizer = init_tokenizer
    if vit is not None:
        from ImageReward.models.BLIP.vit import VisionTransformer

        def create_vit(kind, image_size, use_grad_checkpointing=False, ckpt_layer=0, drop_path_rate=0):
            encoder = VisionTransformer(img_size=image_size, patch_size=vit["patch_size"], embed_dim=vit["embed_dim"],
                                        depth=vit["depth"], num_heads=vit["num_heads"],
                                        use_grad_checkpointing=use_grad_checkpointing, ckpt_layer=ckpt_layer,
                                        drop_path_rate=0.1)
            return encoder, vit["embed_dim"]

        blip_pretrain.create_vit = create_vit


def load_model(req, device="cpu"):
    """``ImageReward.load`` with local tokenizer (and tiny ViT), checking that no parameter stays random."""
    import torch
    from ImageReward.ImageReward import ImageReward

    patch_package(req["tokenizer"], req.get("vit"))
    state_dict = torch.load(req["checkpoint"], map_location="cpu")
    model = ImageReward(device=device, med_config=req["med_config"]).to(device)
    result = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing:
        raise RuntimeError(f"{req['checkpoint']} leaves {len(missing)} parameter(s) of ImageReward unset, e.g. "
                           f"{missing[:5]}")
    model.eval()
    return model, {"missing": result.missing_keys, "unexpected": result.unexpected_keys}


def score(req):
    import torch
    from PIL import Image

    device = req.get("device", "cpu")
    model, load_info = load_model(req, device)
    items, batch, scores = req["items"], int(req.get("batch", 32)), []
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        with torch.no_grad():
            text = model.blip.tokenizer([it["caption"] for it in chunk], padding="max_length", truncation=True,
                                        max_length=35, return_tensors="pt").to(device)
            images = torch.stack([model.preprocess(Image.open(it["file"])) for it in chunk]).to(device)
            image_embeds = model.blip.visual_encoder(images)
            image_atts = torch.ones(image_embeds.size()[:-1], dtype=torch.long).to(device)
            out = model.blip.text_encoder(text.input_ids, attention_mask=text.attention_mask,
                                          encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts,
                                          return_dict=True)
            rewards = model.mlp(out.last_hidden_state[:, 0, :].float())
            rewards = (rewards - model.mean) / model.std
        scores += rewards.squeeze(-1).double().cpu().tolist()
    return {"scores": scores, "versions": _versions(), "precision": "fp32", "load": load_info}


def _tiny_vocab():
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += list(string.ascii_lowercase) + list(string.digits) + list(string.punctuation)
    words += ["##" + c for c in string.ascii_lowercase + string.digits]
    words += ["a", "the", "of", "on", "in", "with", "and"]
    return list(dict.fromkeys(words))


def tiny(req):
    import torch

    out = Path(req["out"])
    tok_dir = out / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    vocab = _tiny_vocab()
    (tok_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}),
                                                   encoding="utf-8")
    med = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
           "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 128,
           "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
           "num_attention_heads": 2, "num_hidden_layers": 1, "pad_token_id": 0, "type_vocab_size": 2,
           "vocab_size": len(vocab) + 2, "encoder_width": TINY_VIT["embed_dim"], "add_cross_attention": True}
    (out / "med_config.json").write_text(json.dumps(med, indent=2), encoding="utf-8")
    (out / "vit.json").write_text(json.dumps(TINY_VIT, indent=2), encoding="utf-8")
    from ImageReward.ImageReward import ImageReward

    patch_package(str(tok_dir), TINY_VIT)
    torch.manual_seed(int(req.get("seed", 0)))
    model = ImageReward(device="cpu", med_config=str(out / "med_config.json"))
    with torch.no_grad():  # the package's MLP init (std 1/769) gives rewards within 1e-4 of each other: spread them
        for layer in model.mlp.layers:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0.0, layer.in_features ** -0.5)
    checkpoint = out / "ImageReward-tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    return {"checkpoint": str(checkpoint), "med_config": str(out / "med_config.json"), "tokenizer": str(tok_dir),
            "vit": str(out / "vit.json"), "versions": _versions()}


def main(argv):
    command, request, answer = argv
    req = json.loads(Path(request).read_text(encoding="utf-8"))
    if isinstance(req.get("vit"), str):
        req["vit"] = json.loads(Path(req["vit"]).read_text(encoding="utf-8"))
    result = {"score": score, "tiny": tiny, "versions": lambda _: {"versions": _versions()}}[command](req)
    Path(answer).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
