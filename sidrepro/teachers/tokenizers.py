"""Offline tokenizers for the tiny teacher zoo: the real CLIP vocabulary and small trained T5/Gemma ones.

No model weights or tokenizer files can be downloaded here, yet the zoo's pipelines must tokenize prompts exactly the
way diffusers drives the real ones (padding, truncation, special tokens, maximum lengths). So:

- CLIP: the open_clip wheel ships OpenAI's 49,408-token BPE vocabulary (``bpe_simple_vocab_16e6.txt.gz``). Rebuilding
  ``vocab.json`` + ``merges.txt`` from it gives a transformers ``CLIPTokenizer`` whose ids equal open_clip's, i.e.
  the ids of the real SD3/FLUX CLIP tokenizers.
- T5 (SD3, FLUX) and Gemma (SANA): no package ships these vocabularies, so a small one is trained deterministically
  with the ``tokenizers`` library on a fixed built-in English caption corpus: a unigram model with T5's layout
  (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, 100 ``<extra_id_*>`` sentinels at the end, ``</s>`` appended) and a
  byte-fallback BPE model with Gemma's layout (``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, ``<mask>`` 4, the
  256 ``<0xNN>`` byte tokens, ``<bos>`` prepended). Both are wrapped in the transformers classes the real snapshots
  use, so their saved folders load through ``from_pretrained`` like the real ones.

The trained vocabularies depend only on the corpus, never on a seed: the same prompt gets the same ids in every zoo.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import string
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTokenizer, GemmaTokenizer, T5Tokenizer

__all__ = [
    "CLIP_MAX_LENGTH",
    "GEMMA_MAX_LENGTH",
    "T5_MAX_LENGTH",
    "caption_corpus",
    "clip_tokenizer",
    "clip_vocab_and_merges",
    "gemma_tokenizer",
    "save_clip_tokenizer",
    "t5_tokenizer",
]

CLIP_MAX_LENGTH = 77  # CLIP's context length (open_clip, SD3, FLUX)
T5_MAX_LENGTH = 512  # model_max_length of the SD3/FLUX T5 tokenizers; FLUX encodes up to 512 tokens
GEMMA_MAX_LENGTH = 8192  # Gemma-2's context; SANA asks for 300 tokens plus its long instruction prefix

T5_VOCAB_SIZE = 1000  # unigram pieces incl. <pad>, </s>, <unk>; the 100 sentinels come on top
T5_EXTRA_IDS = 100
GEMMA_VOCAB_SIZE = 1536  # incl. 5 special tokens and the 256 byte-fallback tokens
_GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]

# --------------------------------------------------------------------------------------------------------------------
# A fixed caption corpus. Hand-written captions in the style of text-to-image prompts, SANA's complex-human
# instruction (so the instruction prefix tokenizes into whole words, as it does with the real Gemma vocabulary),
# and a deterministic grid of "<style> of <adjective> <subject> <scene>" captions for breadth.
_CAPTIONS = """\
A photo of a cat sitting on a red chair next to a window.
An astronaut riding a horse on the moon, digital art.
A bowl of fresh fruit on a wooden kitchen table, soft morning light.
A close-up portrait of an old fisherman with a grey beard, black and white photograph.
A futuristic city skyline at night with neon lights reflecting on wet streets.
A small wooden cabin in a snowy forest under a starry sky.
Two dogs playing with a ball on a sandy beach at sunset.
A watercolor painting of a lighthouse on a rocky coast.
A bustling street market in Marrakech with colorful spices and lanterns.
A steaming cup of coffee and a croissant on a marble counter.
A red sports car parked in front of a modern glass building.
A field of sunflowers under a clear blue sky, oil painting.
A giant octopus attacking a pirate ship in a stormy sea, epic fantasy illustration.
A cozy library with tall bookshelves, a fireplace and a leather armchair.
A hummingbird hovering next to a bright pink flower, macro photography.
A bicycle leaning against a brick wall covered in ivy.
A plate of spaghetti with tomato sauce and basil, food photography.
A mountain lake reflecting snow-capped peaks at dawn.
A robot reading a newspaper on a park bench, 3D render.
An elegant woman in a long blue dress walking through a garden of roses.
A child flying a kite on a windy hill, children's book illustration.
A medieval castle on a cliff above the ocean, dramatic clouds.
A vintage typewriter on a desk with scattered papers and a lamp.
A herd of elephants crossing a dusty savanna road.
A bowl of ramen with an egg, green onions and chopsticks, anime style.
A golden retriever puppy sleeping on a fluffy white blanket.
A neon sign that says "open late" above a diner door.
The Eiffel Tower in Paris covered in snow, postcard style.
A surreal landscape with floating islands and waterfalls, concept art.
A jazz band performing on a small stage in a dimly lit club.
A glass of red wine next to a cheese board and grapes.
An owl perched on a branch in a misty forest at twilight.
A sailboat on calm turquoise water near a tropical island.
A busy train station with people hurrying past, long exposure.
A knight in shining armor holding a sword, fantasy portrait.
A pair of running shoes on a track, product photography, studio lighting.
A stack of pancakes with maple syrup and blueberries.
A tiger walking through tall grass, wildlife photography.
A cyberpunk girl with glowing tattoos and a hood, 8k, highly detailed.
A row of colorful houses along a canal in Amsterdam.
A teddy bear wearing a scarf sitting in the snow.
A hot air balloon festival over a valley at sunrise.
A chef preparing sushi in a traditional Japanese restaurant.
A minimalist living room with a grey sofa and a large plant.
An abstract painting with bold geometric shapes in red, yellow and blue.
A frog wearing a tiny crown sitting on a lily pad.
Close-up of raindrops on a green leaf, shallow depth of field.
A pirate treasure chest overflowing with gold coins and jewels.
A snowy owl flying over a frozen lake, 4k wallpaper.
A panda eating bamboo in a lush green forest.
A spaceship landing on a red desert planet with two moons.
A cup of tea with lemon on a rainy day by the window.
A stone bridge over a quiet river in autumn, orange and yellow leaves.
A black cat with green eyes looking at the camera.
A crowded beach with umbrellas and people swimming, aerial view.
Portrait of a young man with curly hair and freckles, natural light.
A dragon curled around a tower, breathing fire into the night sky.
A vase of tulips on a windowsill, impressionist painting.
An old map of the world with compass and ship drawings.
A lone tree on a hill under the milky way.
Numbers 0 1 2 3 4 5 6 7 8 9, 10, 24, 100, 1080p, 2024 and a sign "50% off" at 5:30 p.m. #sale @home.
Symbols ! " # $ % & ' ( ) * + , - . / : ; < = > ? @ [ \\ ] ^ _ ` { | } ~
UPPER CASE WORDS: A B C D E F G H I J K L M N O P Q R S T U V W X Y Z, "STOP", "OPEN", "SALE".
A café in Zürich, a jalapeño pizza, a naïve façade, São Paulo at night, crème brûlée, Ångström, El Niño.
Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual descriptions suitable for image \
generation. Evaluate the level of detail in the user prompt:
- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial relationships \
to create vivid and concrete scenes.
- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.
Here are examples of how to transform or refine prompts:
- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping peacefully \
on a warm sunny windowsill, surrounded by pots of blooming red flowers.
- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street lamps, \
a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass skyscrapers.
Please generate only the enhanced description for the prompt below and avoid including any additional commentary or \
evaluations:
User Prompt:
"""
_STYLES = ["A photo", "A painting", "A sketch", "A 3D render", "An illustration", "A close-up photograph",
           "A watercolor", "A digital artwork", "A cinematic still", "A pencil drawing"]
_ADJECTIVES = ["small", "large", "old", "young", "happy", "sleepy", "shiny", "colorful", "wooden", "golden",
               "fluffy", "ancient", "tiny", "giant", "bright", "dark", "quiet", "noisy", "elegant", "rusty"]
_SUBJECTS = ["dog", "cat", "horse", "bird", "car", "house", "tree", "boat", "robot", "woman", "man", "child",
             "flower", "mountain", "river", "castle", "train", "bicycle", "fox", "bear", "rabbit", "guitar",
             "lamp", "chair", "clock", "teapot", "dragon", "butterfly", "lion", "whale"]
_SCENES = ["in a forest", "on a beach", "in the city", "under the rain", "at sunset", "in the snow",
           "on a table", "in a garden", "near a lake", "in space", "in the desert", "on a bridge",
           "in a kitchen", "at night", "in a field of flowers", "by the sea", "on a mountain top",
           "in a busy street", "inside a museum", "in the morning fog"]


def caption_corpus() -> list[str]:
    """The fixed training corpus: hand-written captions, SANA's instruction text and a caption grid (no randomness)."""
    lines = [line for line in _CAPTIONS.splitlines() if line.strip()]
    grid = []
    # Walk the (style, adjective, subject, scene) grid with coprime strides: a few thousand varied captions that
    # cover every word many times, in a fixed order.
    n = len(_STYLES) * len(_ADJECTIVES) * len(_SUBJECTS)
    for i in range(n):
        style = _STYLES[i % len(_STYLES)]
        adjective = _ADJECTIVES[(7 * i) % len(_ADJECTIVES)]
        subject = _SUBJECTS[(11 * i) % len(_SUBJECTS)]
        scene = _SCENES[(13 * i) % len(_SCENES)]
        article = "an" if adjective[0] in "aeiou" else "a"
        grid.append(f"{style} of {article} {adjective} {subject} {scene}.")
    # The hand-written lines repeat so that their words outweigh the grid's vocabulary.
    return lines * 20 + grid


def _iter_corpus() -> Iterator[str]:
    yield from caption_corpus()


# --------------------------------------------------------------------------------------------------------------------
# CLIP


def _clip_bpe_file() -> Path:
    """open_clip's vocabulary file, found without importing open_clip (its import pulls in torch and timm, ~7 s)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("open_clip (open_clip_torch) is needed for the CLIP vocabulary")
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"the CLIP BPE vocabulary is missing from the open_clip package: {path}")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (as ``open_clip.tokenizer.bytes_to_unicode``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """OpenAI CLIP's BPE vocabulary (49,408 tokens) and merge list, rebuilt from the file open_clip ships.

    The construction follows ``open_clip.tokenizer.SimpleTokenizer``: 256 byte symbols, the same with ``</w>``, one
    token per merge (the first 48,894 merges), then the two special tokens, which transformers names
    ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).
    """
    tokens, merges = _clip_tokens_and_merges()
    return {tok: i for i, tok in enumerate(tokens)}, list(merges)


@functools.cache
def _clip_tokens_and_merges() -> tuple[tuple[str, ...], tuple[str, ...]]:
    with gzip.open(_clip_bpe_file()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return tuple(tokens), tuple(merges)


def clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A transformers ``CLIPTokenizer`` with the real CLIP vocabulary and a 77-token context.

    ``pad_token``: SD3's first CLIP tokenizer and FLUX's pad with ``<|endoftext|>``; SD3's second (OpenCLIP bigG)
    pads with ``"!"`` (id 0), as open_clip itself does.
    """
    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], pad_token=pad_token,
                         model_max_length=CLIP_MAX_LENGTH)


def save_clip_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> None:
    """Write a CLIP tokenizer folder in the layout of the real snapshots: ``vocab.json``, ``merges.txt`` and the
    configuration files (no ``tokenizer.json``, which would add 3.6 MB per copy and which transformers rebuilds)."""
    folder = Path(folder)
    clip_tokenizer(pad_token).save_pretrained(folder)
    (folder / "tokenizer.json").unlink(missing_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------------------------
# T5 and Gemma


def _printable_alphabet(space: str) -> list[str]:
    """Printable ASCII (space mapped to ``space``), so that no English prompt needs an unknown or byte token."""
    return sorted({space if c == " " else c for c in string.printable if c not in "\t\n\r\x0b\x0c"})


def t5_tokenizer(vocab_size: int = T5_VOCAB_SIZE) -> T5Tokenizer:
    """A T5-style unigram tokenizer trained on :func:`caption_corpus`.

    Layout as the real T5 vocabulary: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, the trained pieces, then the 100
    ``<extra_id_*>`` sentinels in reverse order (``<extra_id_0>`` last); ``</s>`` is appended to every sequence.
    The pre-tokenization is the one ``T5Tokenizer`` builds (whitespace split, ``▁`` word prefix), so the saved
    folder reloads to the same ids.
    """
    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
    ])
    specials = ["<pad>", "</s>", "<unk>"]
    # No initial_alphabet: the trainer scores characters absent from the corpus in hash-map order, which changes from
    # run to run; the corpus contains every printable ASCII character instead.
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>",
                                      show_progress=False)
    backend.train_from_iterator(_iter_corpus(), trainer)
    trained = json.loads(backend.to_str())["model"]["vocab"]
    # The EM sums run in hash-map order, so scores differ in the last bits between runs and equal-score pieces may
    # swap places: round the scores and sort (score, piece) for a vocabulary that is identical on every build.
    learned = [(str(p), round(float(s), 6)) for p, s in trained if p not in specials]
    pieces = [(p, 0.0) for p in specials] + sorted(learned, key=lambda x: (-x[1], x[0]))
    pieces += [(f"<extra_id_{i}>", 0.0) for i in range(T5_EXTRA_IDS - 1, -1, -1)]
    return T5Tokenizer(vocab=pieces, extra_ids=T5_EXTRA_IDS, model_max_length=T5_MAX_LENGTH)


def gemma_tokenizer(vocab_size: int = GEMMA_VOCAB_SIZE) -> GemmaTokenizer:
    """A Gemma-style byte-fallback BPE tokenizer trained on :func:`caption_corpus`.

    Layout as Gemma's: ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, ``<mask>`` 4, the byte tokens
    ``<0x00>``..``<0xFF>`` (so any text encodes without ``<unk>``), then the merges; spaces become ``▁``, ``<bos>`` is
    prepended and no ``<eos>`` appended (SANA keeps the first token, ``<bos>``, and the last 299 positions).
    """
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    backend = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    # Train on words ("▁word" pieces) so that no merge spans a word boundary, as in SentencePiece's BPE; at run time
    # GemmaTokenizer applies the merges to the whole string, which then gives the same pieces.
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_next")
    alphabet = _printable_alphabet("▁")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=_GEMMA_SPECIALS + byte_tokens, initial_alphabet=alphabet,
        limit_alphabet=len(alphabet), show_progress=False,
    )
    backend.train_from_iterator(_iter_corpus(), trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return GemmaTokenizer(vocab=dict(model["vocab"]), merges=merges, add_bos_token=True, add_eos_token=False,
                          model_max_length=GEMMA_MAX_LENGTH)
