"Tests of gan_engine.text: words and stable hashes, the hashed bag encoder, transformers text models from local folders, builders."
import json, os, socket, subprocess, sys, warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gan_engine.registry import ConfigError
from gan_engine.text import (TEXT_ENCODERS, HashedBagEncoder, TextEncoder, build_text_encoder, collision_rate,
                             stable_hash, words)

COLOURS = ["red", "green", "blue", "yellow", "cyan", "magenta"]
SHAPES = ["circle", "square", "triangle"]
PLACES = ["top left", "top right", "bottom left", "bottom right", "centre"]
PHRASINGS = ["a {size} {colour} {shape} in the {place}", "{size} {colour} {shape}, {place}",
             "a {colour} {shape} at the {place}", "{place}: a {size} {shape} coloured {colour}"]
SHAPE_PROMPTS = [f.format(size=s, colour=c, shape=sh, place=p) for f in PHRASINGS for s in ("small", "large")
                 for c in COLOURS for sh in SHAPES for p in PLACES]
PROMPTS = ["a small red triangle in the top left", "a large blue circle at the bottom right", "green square, centre", ""]


def text_cfg(**kw):
    "A stand-in config with a `Text` section (the real one has these keys)."
    base = dict(encoder="hashed", dim=16, buckets=512, ngrams=2, max_tokens=32, path=None, trainable=None,
                pooling="pooled", max_length=77)
    return SimpleNamespace(Text=SimpleNamespace(**{**base, **kw}))


# --- words and stable hashes --------------------------------------------------------------------

def test_words():
    assert words("A small RED triangle, top-left!") == ["a", "small", "red", "triangle", "top", "left"]
    assert words("3 cats_and 2 dogs") == ["3", "cats", "and", "2", "dogs"]
    assert words("") == [] and words("?! ,") == []
    assert words("Caf\u00e9") == words("Cafe\u0301") == ["café"]
    with pytest.raises(TypeError, match="Expected `text` to be a str but got int"): words(3)


def test_stable_hash_constants():
    # computed once; blake2b does not change, so neither may these
    assert stable_hash("red", 4096) == 2317
    assert stable_hash("magenta", 4096) == 2732
    assert stable_hash("top left", 2**31) == 1538658497
    assert stable_hash("", 7) == 5
    assert all(0 <= stable_hash(w, 3) < 3 for w in words(" ".join(PROMPTS)))
    with pytest.raises(ValueError, match="Expected `buckets` to be an int >= 1 but got 0"): stable_hash("red", 0)


_CHILD = """
import json
from gan_engine.text import HashedBagEncoder, stable_hash
prompts = {prompts!r}
print(json.dumps(dict(python=hash("red"), stable=[stable_hash(w, 4096) for w in ("red", "top left", "centre")],
                      ids=HashedBagEncoder(buckets=4096).tokenize(prompts)["input_ids"].tolist())))
"""


def test_stable_hash_across_processes():
    "Token ids do not depend on PYTHONHASHSEED (Python's own str hash does)."
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD.format(prompts=PROMPTS)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONHASHSEED": seed})
             for seed in ("1", "12345")]                               # both at once: each spends its time importing torch
    runs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        runs.append(json.loads(out.strip().splitlines()[-1]))
    assert runs[0]["python"] != runs[1]["python"]            # the seed does salt Python's hash ...
    assert runs[0]["stable"] == runs[1]["stable"] == [stable_hash(w, 4096) for w in ("red", "top left", "centre")]
    assert runs[0]["ids"] == runs[1]["ids"] == HashedBagEncoder(buckets=4096).tokenize(PROMPTS)["input_ids"].tolist()


# --- the hashed bag encoder ---------------------------------------------------------------------

def test_hashed_is_a_text_encoder():
    enc = HashedBagEncoder(dim=16)
    assert isinstance(enc, TextEncoder) and isinstance(enc, nn.Module)
    assert (enc.dim, enc.state_dim, enc.trainable) == (16, 16, True)
    assert enc.device == torch.device("cpu")


def test_hashed_shapes():
    torch.manual_seed(0)
    enc = HashedBagEncoder(dim=16)
    out = enc(PROMPTS)
    assert out.shape == (4, 16) and out.dtype == torch.float32
    pooled, states, mask = enc.states(PROMPTS)
    n = [len(enc.tokens_of(p)) or 1 for p in PROMPTS]           # words + bigrams; "" has the null token
    assert n == [15, 15, 5, 1]
    assert states.shape == (4, 15, 16) and mask.shape == (4, 15) and mask.dtype == torch.long
    assert mask.sum(1).tolist() == n
    assert torch.equal(pooled, out)
    for i, k in enumerate(n):
        assert states[i, k:].abs().sum() == 0                    # padding states are zero
        torch.testing.assert_close(pooled[i], states[i, :k].mean(0) * k ** 0.5)
    tok = enc.tokenize(PROMPTS)
    assert set(tok) == {"input_ids", "attention_mask"} and tok["input_ids"].device.type == "cpu"
    assert tok["input_ids"].dtype == torch.long and tok["input_ids"].max() < 4096 + 2


def test_hashed_unit_scale_at_init():
    torch.manual_seed(0)
    enc = HashedBagEncoder(dim=256)
    with torch.no_grad(): std = enc(["red", "a small red triangle in the top left and a blue circle below it"]).std(1)
    assert ((std > 0.8) & (std < 1.2)).all(), std


def test_hashed_deterministic():
    torch.manual_seed(3); a = HashedBagEncoder(dim=8)
    torch.manual_seed(3); b = HashedBagEncoder(dim=8)
    torch.manual_seed(4); c = HashedBagEncoder(dim=8)
    assert torch.equal(a(PROMPTS), b(PROMPTS)) and torch.equal(a(PROMPTS), a(PROMPTS))
    assert torch.equal(a.tokenize(PROMPTS)["input_ids"], c.tokenize(PROMPTS)["input_ids"])  # ids never depend on weights
    assert torch.equal(a(["blue circle"])[0], a(["blue circle", "red square"])[0])           # nor on the batch


def test_hashed_different_prompts_differ():
    enc = HashedBagEncoder(dim=16)
    with torch.no_grad(): out = enc(sorted(set(SHAPE_PROMPTS)))
    assert torch.cdist(out, out).add(torch.eye(len(out)) * 1e9).min() > 1e-3
    with torch.no_grad():                                          # n-grams keep the word order
        assert not torch.allclose(enc(["top left"]), enc(["left top"]))


def test_null_token():
    enc = HashedBagEncoder(dim=16)
    assert enc.tokenize([""])["input_ids"].tolist() == [[HashedBagEncoder.NULL]]
    assert enc.tokenize(["?!"])["input_ids"].tolist() == [[HashedBagEncoder.NULL]]   # no words: no prompt either
    vocab = sorted({w for p in SHAPE_PROMPTS for w in words(p)})
    assert HashedBagEncoder.NULL not in enc.tokenize(SHAPE_PROMPTS + vocab)["input_ids"].unique().tolist()
    with torch.no_grad():
        null, each = enc([""]), enc(vocab)
        assert (each - null).abs().amax(1).min() > 1e-3
        assert null.abs().sum() > 0                                   # a learned row, not zeros
    # the null row learns
    enc([""]).sum().backward()
    assert enc.embed.weight.grad[HashedBagEncoder.NULL].abs().sum() > 0


def test_gradients_reach_the_embedding():
    enc = HashedBagEncoder(dim=8, buckets=1024)
    target = torch.randn(len(PROMPTS), 8)
    nn.functional.mse_loss(enc(PROMPTS), target).backward()
    g = enc.embed.weight.grad
    used = set(enc.tokenize(PROMPTS)["input_ids"].unique().tolist()) - {HashedBagEncoder.PAD}
    assert set(g.abs().sum(1).nonzero().flatten().tolist()) == used
    assert g[HashedBagEncoder.PAD].abs().sum() == 0


def test_hashed_trains():
    torch.manual_seed(0)
    enc, head = HashedBagEncoder(dim=16), nn.Linear(16, len(COLOURS))
    labels = torch.tensor([next(i for i, c in enumerate(COLOURS) if c in words(p)) for p in SHAPE_PROMPTS])
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=0.05)
    tokens, losses = enc.tokenize(SHAPE_PROMPTS), []
    for _ in range(10):
        loss = nn.functional.cross_entropy(head(enc.encode(tokens)[0]), labels)
        opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_hashed_frozen():
    enc = HashedBagEncoder(dim=8, trainable=False)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training and not enc.embed.training
    assert not enc(PROMPTS).requires_grad
    assert HashedBagEncoder(dim=8).train().training


def test_max_tokens_and_ngrams():
    p = "a small red triangle in the top left"
    assert HashedBagEncoder(max_tokens=3).tokens_of(p) == ["a", "small", "red"]
    assert HashedBagEncoder(ngrams=1).tokens_of(p) == words(p)
    three = HashedBagEncoder(ngrams=3).tokens_of("top left red")
    assert three == ["top", "left", "red", "top left", "left red", "top left red"]
    assert HashedBagEncoder(max_tokens=4).tokenize([p] * 2)["input_ids"].shape == (2, 4)


def test_collision_rate():
    stats = collision_rate(SHAPE_PROMPTS, buckets=4096, ngrams=2)
    assert set(stats) == {"tokens", "buckets_used", "colliding", "rate"}
    assert stats["tokens"] == 101 and stats["colliding"] == 4 and stats["buckets_used"] == 99
    assert stats["rate"] == pytest.approx(4 / 101) and stats["rate"] < 0.1
    assert HashedBagEncoder(buckets=4096).collision_rate(SHAPE_PROMPTS) == stats["rate"]
    tiny = collision_rate(["red circle", "blue square"], buckets=2**40)
    assert tiny == dict(tokens=6, buckets_used=6, colliding=0, rate=0.0)
    assert HashedBagEncoder(buckets=2**20, ngrams=1, dim=1).collision_rate(["red circle"]) == 0.0
    assert collision_rate(["red circle"], buckets=1)["rate"] == 1.0
    assert collision_rate([""])["rate"] == 0.0


@pytest.mark.parametrize("bad, err, msg", [
    ("a red circle", TypeError, "Expected `prompts` to be a list of strings but got a str"),
    (None, TypeError, "Expected `prompts` to be a list of strings but got NoneType"),
    (("red", 3), TypeError, "Expected `prompts` to be a list of strings but got int at index 1"),
    ([], ValueError, "Expected `prompts` to be a list of strings but got an empty list"),
])
def test_bad_prompts(bad, err, msg):
    enc = HashedBagEncoder(dim=4)
    for call in (enc, enc.tokenize, enc.states):
        with pytest.raises(err, match=msg.replace("(", r"\(")): call(bad)


def test_bad_arguments():
    for kw, name in [(dict(dim=0), "dim"), (dict(buckets=-1), "buckets"), (dict(ngrams=0), "ngrams"),
                     (dict(max_tokens=1.5), "max_tokens")]:
        with pytest.raises(ValueError, match=f"Expected `{name}` to be an int >= 1"): HashedBagEncoder(**kw)
    with pytest.raises(ValueError, match="Expected `tokens` to hold input_ids and attention_mask"):
        HashedBagEncoder(dim=4).encode({"input_ids": torch.zeros(1, 1, dtype=torch.long)})


# --- builders -----------------------------------------------------------------------------------

def test_build_hashed():
    enc = build_text_encoder(text_cfg())
    assert type(enc) is HashedBagEncoder and (enc.dim, enc.buckets, enc.ngrams, enc.max_tokens) == (16, 512, 2, 32)
    assert enc.trainable                                             # trainable: null means trainable for hashed
    assert not build_text_encoder(text_cfg(trainable=False)).trainable
    assert TEXT_ENCODERS.names() == ["hashed", "transformers"]
    assert build_text_encoder(text_cfg(encoder="HASHED")).dim == 16


def test_build_by_import_path():
    enc = build_text_encoder(text_cfg(encoder="gan_engine.text:build_hashed_encoder", dim=8))
    assert type(enc) is HashedBagEncoder and enc.dim == 8
    with pytest.raises(TypeError, match="builder for 'builtins:str' to return a torch.nn.Module but got str"):
        build_text_encoder(text_cfg(encoder="builtins:str"))
    with pytest.raises(ConfigError, match=r"Text.encoder: 'torch.nn:Identity' built a Identity, which lacks a text encoder's `dim`"):
        build_text_encoder(text_cfg(encoder="torch.nn:Identity"))


def test_build_errors():
    with pytest.raises(ConfigError, match=r"Text.encoder: unknown text encoder 'hashd' \(did you mean 'hashed'\?\)"):
        build_text_encoder(text_cfg(encoder="hashd"))
    with pytest.raises(ConfigError) as e: build_text_encoder(text_cfg(dim=0, ngrams="2", trainable="yes"))
    assert e.value.problems == ["Text.dim: expected an int >= 1 but got 0", "Text.ngrams: expected an int >= 1 but got '2'",
                                "Text.trainable: expected true, false or null but got 'yes'"]
    with pytest.raises(ConfigError, match="Text.path: expected a local folder"):
        build_text_encoder(text_cfg(encoder="transformers", path=None))


def test_transformers_missing_folder_without_network(tmp_path, monkeypatch):
    "Folder checks come before transformers is asked for anything (they hold without it too)."
    from gan_engine.text import TransformersTextEncoder
    def refuse(*a, **k): raise AssertionError("network touched")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(ConfigError, match=r"Text.path: .* '.*nowhere' does not exist"):
        TransformersTextEncoder(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="looks like a name on the Hugging Face Hub"):
        TransformersTextEncoder("openai/clip-vit-base-patch32")
    with pytest.raises(ConfigError, match="to hold the model's config.json but it has none"):
        TransformersTextEncoder(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="Text.path: expected the folder .* to hold tokenizer files"):
        TransformersTextEncoder(tmp_path)
    with pytest.raises(ConfigError, match=r"Text.pooling: expected one of \['pooled', 'mean', 'first'\] but got 'max'"):
        TransformersTextEncoder(tmp_path, pooling="max")


def test_transformers_not_installed(tmp_path, monkeypatch):
    from gan_engine.text import TransformersTextEncoder
    (tmp_path / "config.json").write_text("{}"); (tmp_path / "tokenizer.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)          # as if it were not installed
    with pytest.raises(ConfigError, match=r"Text.encoder: 'transformers' needs the transformers package: "
                                          r"pip install \"gan_engine\[text\]\""):
        TransformersTextEncoder(tmp_path)


# --- transformers text models -------------------------------------------------------------------

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]


def save_tokenizer(folder):
    "A word-level tokenizer of the shapes vocabulary, built here (no download), saved into `folder`."
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(SPECIALS + sorted({w for p in SHAPE_PROMPTS for w in words(p)}))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer, tk.pre_tokenizer = normalizers.Lowercase(), pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                            eos_token="<eos>").save_pretrained(folder)
    return len(vocab)


TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77, pad_token_id=0, bos_token_id=2, eos_token_id=3)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    "A tiny, randomly initialised CLIP text model and its tokenizer in a local folder."
    pytest.importorskip("transformers")
    from transformers import CLIPTextConfig, CLIPTextModel
    folder = tmp_path_factory.mktemp("tiny_clip")
    n = save_tokenizer(folder)
    torch.manual_seed(0)
    # attention dropout, so that a frozen encoder left in train mode would show it
    CLIPTextModel(CLIPTextConfig(vocab_size=n, attention_dropout=0.5, **TINY_TEXT)).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    "Every test here fails if it opens a connection."
    def refuse(*a, **k): raise AssertionError("network touched")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_loads_offline(clip_dir, monkeypatch):
    from gan_engine.text import TransformersTextEncoder
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    enc = TransformersTextEncoder(clip_dir)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert type(enc.model).__name__ == "CLIPTextModel"
    assert (enc.dim, enc.state_dim, enc.max_length, enc.pooling, enc.trainable) == (32, 32, 77, "pooled", False)
    assert TransformersTextEncoder(clip_dir, max_length=500).max_length == 77      # capped at the positions


def test_frozen_by_default(clip_dir):
    from gan_engine.text import TransformersTextEncoder
    enc = TransformersTextEncoder(clip_dir)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert enc.training and not enc.model.training and not any(m.training for m in enc.model.modules())
    a, b = enc(PROMPTS), enc(PROMPTS)
    assert torch.equal(a, b) and not a.requires_grad
    assert torch.equal(a, enc.eval()(PROMPTS))


def test_trainable(clip_dir):
    from gan_engine.text import TransformersTextEncoder
    torch.manual_seed(0)
    enc = TransformersTextEncoder(clip_dir, trainable=True).train()
    assert all(p.requires_grad for p in enc.parameters()) and enc.model.training
    out = enc(PROMPTS)
    assert not torch.equal(out, enc(PROMPTS))                        # dropout is live: the frozen check means something
    out.pow(2).mean().backward()
    grads = [p.grad for p in enc.model.parameters()]
    assert sum(g is not None and g.abs().sum() > 0 for g in grads) > len(grads) // 2


@pytest.mark.parametrize("pooling", ["pooled", "mean", "first"])
def test_pooling(clip_dir, pooling):
    from gan_engine.text import TransformersTextEncoder
    enc = TransformersTextEncoder(clip_dir, pooling=pooling)
    with torch.no_grad(): pooled, states, mask = enc.states(PROMPTS)
    assert pooled.shape == (4, 32) and states.shape == (4, mask.shape[1], 32) and mask.shape == (4, 10)
    assert mask.sum(1).tolist() == [10, 10, 6, 2]                    # words + <bos> and <eos>
    lengths = mask.sum(1)
    if pooling == "pooled":    # CLIP: the state of the end-of-text token
        expect = states[torch.arange(4), lengths - 1]
    elif pooling == "mean":
        expect = torch.stack([states[i, :k].mean(0) for i, k in enumerate(lengths)])
    else:
        expect = states[:, 0]
    torch.testing.assert_close(pooled, expect)


def test_projection(clip_dir):
    from gan_engine.text import TransformersTextEncoder
    enc = TransformersTextEncoder(clip_dir, dim=16, pooling="mean")
    assert (enc.dim, enc.state_dim) == (16, 16)
    pooled, states, mask = enc.states(PROMPTS)
    assert pooled.shape == (4, 16) and states.shape == (4, 10, 16)
    assert not any(p.requires_grad for p in enc.model.parameters())
    assert all(p.requires_grad for p in enc.proj.parameters())       # the projection trains on a frozen model
    enc.train(); assert enc.proj.training and not enc.model.training
    pooled.sum().backward()
    assert enc.proj.weight.grad is not None and enc.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.model.parameters())


def test_whole_clip_folder_gives_text_tower(tmp_path):
    pytest.importorskip("transformers")
    from transformers import CLIPConfig, CLIPModel
    from gan_engine.text import TransformersTextEncoder
    n = save_tokenizer(tmp_path)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, image_size=32,
                  patch_size=16)
    text = {k: v for k, v in TINY_TEXT.items()}
    clip = CLIPModel(CLIPConfig(text_config=dict(vocab_size=n, **text), vision_config=vision, projection_dim=8))
    clip.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                               # unused vision weights are no warning
        enc = TransformersTextEncoder(tmp_path)
    assert type(enc.model).__name__ == "CLIPTextModel"
    want = clip.text_model.embeddings.token_embedding.weight
    torch.testing.assert_close(enc.model.get_input_embeddings().weight, want)


def test_auto_model_folder(tmp_path):
    "A non-CLIP model (BERT) through AutoModel: `first` is [CLS], `pooled` its pooler output."
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertModel
    from gan_engine.text import TransformersTextEncoder
    n = save_tokenizer(tmp_path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=n, hidden_size=24, intermediate_size=30, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, pad_token_id=0)).save_pretrained(tmp_path)
    enc = TransformersTextEncoder(tmp_path, pooling="first")
    assert type(enc.model).__name__ == "BertModel" and enc.dim == 24 and enc.max_length == 64
    with torch.no_grad():
        pooled, states, _ = enc.states(PROMPTS)
        torch.testing.assert_close(pooled, states[:, 0])
        pooled = TransformersTextEncoder(tmp_path)(PROMPTS)
        assert pooled.shape == (4, 24) and pooled.abs().max() <= 1   # BERT's pooler ends in tanh


def test_build_transformers(clip_dir):
    from gan_engine.text import TransformersTextEncoder
    enc = build_text_encoder(text_cfg(encoder="transformers", path=str(clip_dir), dim=None, pooling="mean",
                                      max_length=20))
    assert type(enc) is TransformersTextEncoder and not enc.trainable and enc.dim == 32 and enc.max_length == 20
    assert enc.proj is None and enc.pooling == "mean"
    enc = build_text_encoder(text_cfg(encoder="transformers", path=str(clip_dir), dim=16, trainable=True))
    assert enc.trainable and enc.dim == 16
    assert enc(["red circle"]).shape == (1, 16)
