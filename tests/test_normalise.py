"Mechanism tests for gan_engine.normalise: round trips, fitting against numpy, registry, config building."
import numpy as np
import pytest
import torch

from gan_engine.normalise import NORMALISERS
from gan_engine.registry import ConfigError
from gan_engine.data import SRDataset, collate
from gan_engine.normalise import (CustomNormaliser, Identity, MinMax, Normaliser, PercentileClip, ScaleOffset, ZScore,
                                  build_normaliser, build_normalisers)

G = torch.Generator().manual_seed(0)
X4 = torch.rand(2, 3, 5, 6, generator=G) * 255           # (B,C,H,W)
X3 = torch.rand(3, 5, 6, generator=G) * 255              # (C,H,W)

BUILTIN_SPECS = [
    "identity", "none", {"name": "scale", "factor": [2.0, 4.0, 8.0], "offset": [1.0, 2.0, 3.0]},
    {"name": "scale", "factor": 255, "signed": True},
    "zero_one", "zero_one_signed", "zero_to_one", "minusone_one", "normalise_10k", "normalize_10k", "reflectance",
    "s2", "sentinel2", "normalise_10k_signed", "s2_signed", "sentinel2_signed", "normalise_s2", "sen2_stretch",
    {"name": "minmax", "min": [0, 1, 2], "max": [255, 200, 100]}, {"name": "minmax", "min": 0, "max": 255, "signed": True},
    {"name": "zscore", "mean": [100, 120, 130], "std": [50, 60, 70]},
    {"name": "percentile", "lower": [0, 0, 0], "upper": [255, 255, 255]},
    {"name": "custom", "normalize": "torch:log1p", "denormalize": "torch:expm1"},
]


@pytest.mark.parametrize("spec", BUILTIN_SPECS, ids=str)
def test_round_trip_every_builtin(spec):
    n = build_normaliser(spec, value_range=(0, 255))
    assert isinstance(n, torch.nn.Module)
    for x in (X4, X3):
        y = n(x)
        assert y.shape == x.shape
        torch.testing.assert_close(n.inverse(y), x, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("cls", [MinMax, ZScore, PercentileClip])
def test_round_trip_fitted(cls):
    n = cls().fit([X3, X4])
    torch.testing.assert_close(n.inverse(n(X4)), X4.clamp(n.lower.view(-1, 1, 1), n.upper.view(-1, 1, 1))
                               if cls is PercentileClip else X4, rtol=1e-5, atol=1e-3)


def test_preset_values():
    cases = [("zero_one", (0, 255), 255.0, 1.0), ("zero_one", (-10, 10), 0.0, 0.5), ("zero_one_signed", (0, 255), 0.0, -1.0),
             ("normalise_10k", None, 2500.0, 0.25), ("normalise_10k_signed", None, 0.0, -1.0),
             ("reflectance", None, 10000.0, 1.0), ("normalise_s2", (0, 10000), 1500.0, 0.0),
             ("sen2_stretch", (0, 1), 0.3, 1.0), ("normalise_s2", (0, 1), 0.0, -1.0)]
    for name, vr, x, y in cases:
        torch.testing.assert_close(build_normaliser(name, vr)(torch.tensor([x])), torch.tensor([y]), msg=name)
    for name in ("zero_one", "zero_one_signed", "normalise_s2", "sen2_stretch"):
        with pytest.raises(ConfigError, match=f"'{name}' needs the data's value range"):
            build_normaliser(name)


def test_names_are_case_insensitive_and_registered():
    names = NORMALISERS.names()
    for n in ("identity", "scale", "zero_one", "zero_one_signed", "normalise_10k", "normalise_10k_signed", "reflectance",
              "s2", "sentinel2", "s2_signed", "minmax", "zscore", "percentile", "custom"):
        assert n in names
    torch.testing.assert_close(build_normaliser("Normalise_10K")(torch.tensor([100.0])), torch.tensor([0.01]))


def test_errors_name_the_problem():
    with pytest.raises(ConfigError, match=r"unknown normaliser 'zero_two'.*zero_one"):
        build_normaliser("zero_two")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['factr'\].*factor"):
        build_normaliser({"name": "scale", "factr": 3})
    with pytest.raises(ConfigError, match=r"with a `name`"):
        build_normaliser({"factor": 3})
    with pytest.raises(ConfigError, match="denormalize"):
        build_normaliser({"name": "custom", "normalize": "torch:log1p"})
    with pytest.raises(ConfigError, match="cannot import module"):
        build_normaliser({"name": "custom", "normalize": "no_such_mod:f", "denormalize": "torch:expm1"})
    with pytest.raises(ConfigError, match="std.*positive"):
        build_normaliser({"name": "zscore", "mean": 0, "std": 0})
    with pytest.raises(ValueError, match=r"with 3 bands.*got shape \(2, 4, 4\)"):
        ZScore([1, 2, 3], [1, 1, 1])(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match=r"\.fit\(train_dataset\)"):
        PercentileClip()(X3)


def test_custom_with_kwargs_and_import_path_name():
    n = build_normaliser({"name": "custom", "normalize": "torch:mul", "denormalize": "torch:div",
                          "normalize_kwargs": {"other": 4.0}, "denormalize_kwargs": {"other": 4.0}})
    assert isinstance(n, CustomNormaliser)
    torch.testing.assert_close(n(torch.tensor([2.0])), torch.tensor([8.0]))
    torch.testing.assert_close(n.inverse(n(X3)), X3)
    m = build_normaliser({"name": "gan_engine.normalise:ScaleOffset", "factor": 5.0})
    torch.testing.assert_close(m(torch.tensor([10.0])), torch.tensor([2.0]))


def _ms_dataset(tmp_path, nan=False):
    rng = np.random.default_rng(1)
    d = tmp_path / "ms"; d.mkdir()
    arrays = []
    for i in range(3):
        a = (rng.random((4, 16, 16)) * np.array([1000, 3000, 5000, 10000])[:, None, None]).astype(np.float32)
        if nan: a[i, 0, 0] = np.nan
        np.save(d / f"{i}.npy", a); arrays.append(a)
    ds = SRDataset(d, scale=2, lr_patch_size=4, allow_nonfinite=nan, value_range=(0, 10000))
    return ds, np.concatenate([a.reshape(4, -1) for a in arrays], 1).astype(np.float64)


@pytest.mark.parametrize("nan", [False, True])
def test_fit_on_dataset_matches_numpy(tmp_path, nan):
    ds, ref = _ms_dataset(tmp_path, nan)
    z, p, m = ZScore().fit(ds), PercentileClip(5, 95).fit(ds), MinMax().fit(ds)
    np.testing.assert_allclose(z.mean.numpy(), np.nanmean(ref, 1), rtol=1e-6)
    np.testing.assert_allclose(z.std.numpy(), np.nanstd(ref, 1), rtol=1e-5)
    np.testing.assert_allclose(p.lower.numpy(), np.nanpercentile(ref, 5, axis=1), rtol=1e-6)
    np.testing.assert_allclose(p.upper.numpy(), np.nanpercentile(ref, 95, axis=1), rtol=1e-6)
    np.testing.assert_allclose(m.lower.numpy(), np.nanmin(ref, 1), rtol=1e-6)
    np.testing.assert_allclose(m.upper.numpy(), np.nanmax(ref, 1), rtol=1e-6)


def test_fit_streaming_equals_one_shot():
    g = torch.Generator().manual_seed(3)
    chunks = [torch.randn(n, 2, 4, 4, generator=g) * 3 + 1e4 for n in (1, 3, 2)]  # large offset: stability check
    allx = torch.cat(chunks)
    a, b = ZScore().fit(chunks), ZScore().fit([allx])
    torch.testing.assert_close(a.mean, b.mean); torch.testing.assert_close(a.std, b.std, rtol=1e-5, atol=1e-5)
    ref = allx.double().transpose(0, 1).reshape(2, -1)
    torch.testing.assert_close(a.std.double(), ref.std(1, unbiased=False), rtol=1e-5, atol=1e-5)


def test_fit_on_loader_batches(tmp_path):
    ds, _ = _ms_dataset(tmp_path)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    torch.manual_seed(0)
    batches = list(loader)
    ref = torch.cat([b["lr"] for b in batches]).double().transpose(0, 1).reshape(4, -1)
    z = ZScore().fit(batches, key="lr")
    torch.testing.assert_close(z.mean.double(), ref.mean(1), rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="key `cond`"):
        ZScore().fit(batches, key="cond")


def test_percentile_subsampling_is_close_and_repeatable():
    g = torch.Generator().manual_seed(0)
    chunks = [torch.rand(1, 1, 40, 40, generator=g) for _ in range(5)]
    a = PercentileClip(10, 90, max_samples=2000).fit(chunks)
    b = PercentileClip(10, 90, max_samples=2000).fit(chunks)
    torch.testing.assert_close(a.lower, b.lower)
    assert abs(float(a.lower) - 0.1) < 0.03 and abs(float(a.upper) - 0.9) < 0.03


def test_percentile_clips_and_inverts_on_range():
    p = PercentileClip(lower=[10.0], upper=[20.0])
    x = torch.tensor([[[5.0, 10.0, 15.0, 20.0, 30.0]]])
    torch.testing.assert_close(p(x), torch.tensor([[[0.0, 0.0, 0.5, 1.0, 1.0]]]))
    torch.testing.assert_close(p.inverse(p(x)), x.clamp(10, 20))
    ps = PercentileClip(lower=[10.0], upper=[20.0], signed=True)
    torch.testing.assert_close(ps(x)[0, 0, 2], torch.tensor(0.0))


def test_statistics_are_buffers_in_state_dict():
    z = ZScore().fit([X4])
    sd = z.state_dict()
    assert set(sd) == {"mean", "std"} and "mean" in dict(z.named_buffers())
    fresh = ZScore()
    assert fresh.needs_fit
    fresh.load_state_dict(sd)
    assert not fresh.needs_fit
    torch.testing.assert_close(fresh(X4), z(X4))
    p = PercentileClip().fit([X4]); q = PercentileClip(); q.load_state_dict(p.state_dict())
    torch.testing.assert_close(q(X4), p(X4))
    assert set(build_normaliser("zero_one", (0, 255)).state_dict()) == {"factor", "offset"}


def test_dtype_and_device_follow_input():
    n = build_normaliser("zero_one", (0, 255))
    assert n(X4.double()).dtype == torch.float64 and n(X4.half()).dtype == torch.float16
    assert n(torch.full((3, 2, 2), 255, dtype=torch.uint8)).dtype == torch.float32


def test_build_normalisers_from_config(tmp_path):
    from gan_engine.config import load_config
    ds, ref = _ms_dataset(tmp_path)
    cfg = load_config({"Data": {"normalization": {"lr": "normalise_10k", "hr": {"name": "zscore"}, "cond": "identity"}}})
    nd = build_normalisers(cfg, value_range=ds.value_range, train_data=ds)
    assert isinstance(nd["cond"], Identity) and isinstance(nd["lr"], ScaleOffset)
    np.testing.assert_allclose(nd["hr"].mean.numpy(), ref.mean(1), rtol=1e-6)
    with pytest.raises(ConfigError, match=r"Data\.normalization\.hr.*needs statistics"):
        build_normalisers(cfg, value_range=ds.value_range)


def test_base_class_contract():
    assert issubclass(ScaleOffset, Normaliser) and Identity()(X3) is X3
