"Captioned shapes: the checker's accuracy on its own renders, its refusals, the data set's splits and determinism."
from collections import Counter
from dataclasses import asdict

import numpy as np
import pytest
import torch

from gan_engine.shapes import (ATTRIBUTES, COLOURS, HELD_OUT, POSITIONS, PROMPT_TEMPLATES, SHAPES, SIZES, ShapeSpec,
                               ShapesDataset, adherence, all_specs, check_batch, check_image, parse_prompt, render)

NONE = dict.fromkeys(ATTRIBUTES)


def _accuracy(size, seeds):
    "Per-attribute share the checker reads right over one render of every spec per seed."
    right, n = Counter(), 0
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for spec in all_specs():
            got = check_image(render(spec, size, rng))
            n += 1
            for a in ATTRIBUTES: right[a] += got[a] == getattr(spec, a)
            right["all"] += got == asdict(spec)
    return {k: right[k] / n for k in ATTRIBUTES + ("all",)}, n


@pytest.mark.parametrize("size,seeds", [(32, range(8)), (64, range(100, 103))])
def test_checker_reads_renders(size, seeds):
    acc, n = _accuracy(size, seeds)
    print(f"checker accuracy at {size} px over {n} renders: {acc}")
    assert n >= (1000 if size == 32 else 500)
    for a in ATTRIBUTES: assert acc[a] >= 0.99, (a, acc)


def test_checker_small_images():
    acc, n = _accuracy(16, [7])
    print(f"checker accuracy at 16 px over {n} renders: {acc}")
    assert acc["all"] >= 0.95, acc


def test_checker_finds_nothing_without_a_shape():
    rng = np.random.default_rng(0)
    for level in (0.0, 0.2, 0.5, 0.8, 1.0):
        assert check_image(np.full((3, 32, 32), level, np.float32)) == NONE
    grey_noise = rng.uniform(0, 1, (1, 32, 32)) + rng.uniform(-0.04, 0.04, (3, 32, 32))  # low chroma everywhere
    assert check_image(grey_noise) == NONE
    assert check_image(0.4 + rng.normal(0, 0.02, (3, 64, 64))) == NONE
    assert check_image(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))) == NONE  # colour noise
    assert check_image(torch.full((3, 32, 32), float("nan"))) == NONE
    tiny = np.full((3, 32, 32), 0.4); tiny[:, 5, 5] = COLOURS["red"]            # one pixel is not a shape
    assert check_image(tiny) == NONE


def test_checker_tolerates_out_of_range_and_tensors():
    spec = ShapeSpec("magenta", "circle", "bottom left", "large")
    img = torch.from_numpy(render(spec, 32, 3))
    assert check_image(img * 1.3 - 0.1) == asdict(spec)    # clipped first
    assert check_batch(img[None].double()) == [asdict(spec)]
    with pytest.raises(ValueError, match=r"\(3, H, W\) RGB image"): check_image(img[:2])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\) batch"): check_batch(img)


def test_adherence():
    rng = np.random.default_rng(4)
    specs = all_specs()[::9]
    images = np.stack([render(s, 32, rng) for s in specs])
    assert adherence(images, specs) == dict.fromkeys(ATTRIBUTES + ("all",), 1.0)
    moved = [ShapeSpec(s.colour, s.shape, "centre" if s.position != "centre" else "top left", s.size) for s in specs]
    assert adherence(images, moved) == {"colour": 1.0, "shape": 1.0, "position": 0.0, "size": 1.0, "all": 0.0}
    blank = images.copy(); blank[::2] = 0.5                       # no shape: wrong on every attribute
    got = adherence(torch.from_numpy(blank), [asdict(s) for s in specs])
    assert got["all"] == pytest.approx(0.5) and got["colour"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="as many specs as images"): adherence(images, specs[:3])


def test_spec_validation_names_the_bad_value():
    with pytest.raises(ValueError, match=r"Expected `colour` to be one of \['red', .*\] but got 'purple'"):
        ShapeSpec("purple", "circle", "centre", "small")
    with pytest.raises(ValueError, match=r"`shape` .* but got 'hexagon'"): ShapeSpec("red", "hexagon", "centre", "small")
    with pytest.raises(ValueError, match=r"`position` .* but got 'left'"): ShapeSpec("red", "circle", "left", "small")
    with pytest.raises(ValueError, match=r"`size` .* but got 'huge'"): ShapeSpec("red", "circle", "centre", "huge")


def test_vocabulary_and_prompts():
    assert list(COLOURS) == ["red", "green", "blue", "yellow", "cyan", "magenta"]
    assert (SHAPES, SIZES, ATTRIBUTES) == (("circle", "square", "triangle"), ("small", "large"),
                                           ("colour", "shape", "position", "size"))
    assert POSITIONS == ("top left", "top right", "bottom left", "bottom right", "centre")
    specs = all_specs()
    assert len(specs) == len(set(specs)) == 180
    assert ShapeSpec("red", "triangle", "top left", "small").prompts()[0] == "a small red triangle in the top left"
    assert len(PROMPT_TEMPLATES) >= 4
    for s in specs:
        ps = s.prompts()
        assert len(set(ps)) == len(PROMPT_TEMPLATES)
        for p in ps: assert parse_prompt(p) == s, p
    assert parse_prompt("Big magenta square — center") == ShapeSpec("magenta", "square", "centre", "large")
    assert parse_prompt("a red square in the top left") is None          # no size
    assert parse_prompt("a small red square at the top left or top right") is None


def test_renders():
    spec = ShapeSpec("blue", "square", "top right", "small")
    for size in (16, 32, 64, 48):
        img = render(spec, size, np.random.default_rng(size))
        assert img.shape == (3, size, size) and img.dtype == np.float32
        assert 0.0 <= img.min() and img.max() <= 1.0
    np.testing.assert_array_equal(render(spec, 32, 9), render(asdict(spec), 32, 9))
    with pytest.raises(ValueError, match="integer >= 16"): render(spec, 12)


def _items(ds, idx):
    return [ds[i] for i in idx]


def test_dataset_items():
    ds = ShapesDataset(40, size=32, seed=3)
    assert len(ds) == 40 and ds.value_range == (0.0, 1.0) and ds.bands == 3
    for i in range(40):
        it = ds[i]
        hr, meta = it["hr"], it["meta"]
        assert hr.shape == (3, 32, 32) and hr.dtype == torch.float32
        assert 0.0 <= float(hr.min()) and float(hr.max()) <= 1.0
        spec = ShapeSpec(**meta["spec"])
        assert spec == ds.spec_of(i) and meta["prompts"] == spec.prompts() == ds.captions_of(i)
        assert it["prompt"] in meta["prompts"] and parse_prompt(it["prompt"]) == spec
        assert meta["index"] == i and meta["source"] == f"shapes:train:{i}"
        assert meta["band_names"] == ["R", "G", "B"] and meta["value_range"] == (0.0, 1.0)
    # the prompts of a data set use every phrasing, not only the canonical one
    assert len({ds[i]["prompt"] == ds.captions_of(i)[0] for i in range(40)}) == 2


def test_dataset_is_deterministic():
    a, b = ShapesDataset(20, seed=5), ShapesDataset(20, seed=5)
    for i in (0, 7, 19):
        x, y = a[i], b[i]
        assert torch.equal(x["hr"], y["hr"]) and x["prompt"] == y["prompt"] and x["meta"] == y["meta"]
        assert torch.equal(a[(i, 42)]["hr"], b[(i, 42)]["hr"])
    assert not torch.equal(a[(3, 1)]["hr"], a[(3, 2)]["hr"])          # training: the sample seed draws
    assert a[(3, 1)]["meta"]["spec"] == a[(3, 2)]["meta"]["spec"] == a[3]["meta"]["spec"]  # but not the spec
    other = ShapesDataset(20, seed=6)
    assert [other.spec_of(i) for i in range(20)] != [a.spec_of(i) for i in range(20)]
    val = ShapesDataset(20, seed=5, train=False)
    for i in (0, 11):   # validation items are fixed, whatever seed the sampler passes
        first = val[i]
        for s in (1, 2):
            again = val[(i, s)]
            assert torch.equal(first["hr"], again["hr"]) and first["prompt"] == again["prompt"]
    seen = ShapesDataset(20, seed=5, train=False, split="seen")
    assert seen.specs == val.specs
    assert not any(torch.equal(seen[i]["hr"], val[j]["hr"]) for i in range(5) for j in range(20))


def test_dataset_splits():
    train, held = ShapesDataset(300, split="train"), ShapesDataset(100, split="held_out")
    pairs = set(HELD_OUT)
    assert len(train.specs) == 150 and len(held.specs) == 30
    assert not any((ShapeSpec(**train[i]["meta"]["spec"]).colour, train.spec_of(i).shape) in pairs for i in range(300))
    assert all((held.spec_of(i).colour, held.spec_of(i).shape) in pairs for i in range(100))
    assert held[5]["meta"]["source"] == "shapes:held_out:5"
    assert len(ShapesDataset(1, split="all").specs) == 180
    custom = ShapesDataset(10, split="held_out", held_out=[("green", "square")])
    assert {(s.colour, s.shape) for s in custom.specs} == {("green", "square")}
    with pytest.raises(ValueError, match="`split` to be one of"): ShapesDataset(5, split="val")
    with pytest.raises(ValueError, match=r"\(colour, shape\) pairs"): ShapesDataset(5, held_out=[("red",)])
    with pytest.raises(ValueError, match="at least one spec"): ShapesDataset(5, split="held_out", held_out=[])
    with pytest.raises(IndexError): train[300]


def test_dataset_balances_attributes():
    ds = ShapesDataset(360, split="all", seed=2)
    specs = [ds.spec_of(i) for i in range(360)]
    assert Counter(specs) == Counter({s: 2 for s in all_specs()})     # two full passes: each spec twice
    train = ShapesDataset(230, seed=1)
    specs = [train.spec_of(i) for i in range(230)]
    for a, values in (("position", POSITIONS), ("size", SIZES), ("shape", SHAPES), ("colour", tuple(COLOURS))):
        counts = Counter(getattr(s, a) for s in specs)
        mean = len(specs) / len(values)
        assert set(counts) == set(values) and all(abs(c - mean) < 0.35 * mean for c in counts.values()), (a, counts)
