"""Regenerate the bundled sample data in `data_samples/` (run once by developers, not at run time).

Sources are scikit-image's bundled sample photographs (`skimage.data`), whose licence notes (in each
loader's docstring) say public domain / CC0 / no known copyright restrictions; see README.md here.
scikit-image is NOT a runtime dependency of gan_engine: `pip install scikit-image` to run this script.

    python data_samples/make_samples.py

Writes:
- sr/train/*.png, sr/val/*.png: RGB uint8 crops (train 160x160, val 128x128) for x4 SR with LR patch 32.
- multispectral/{train,val}/*.npy: (4,H,W) uint16 "reflectance-like" arrays, values 0..10000, bands
  R, G, B, NIR. RGB reflectance = 10000 * 0.8 * srgb_to_linear(rgb/255); NIR is synthetic (see
  `synthetic_nir`), a vegetation-like function of the linear RGB channels.
"""
from pathlib import Path
import numpy as np
from PIL import Image
import skimage.data as skd

HERE = Path(__file__).resolve().parent

# (source loader, top, left, size) per crop; train and val come from different photographs.
SR_TRAIN = [("astronaut", 20, 170, 160), ("astronaut", 300, 60, 160), ("astronaut", 200, 330, 160),
            ("coffee", 40, 150, 160), ("coffee", 200, 260, 160), ("coffee", 120, 420, 160),
            ("chelsea", 40, 120, 160), ("chelsea", 120, 260, 160), ("chelsea", 100, 20, 160),
            ("immunohistochemistry", 0, 0, 160), ("immunohistochemistry", 200, 200, 160),
            ("rocket", 40, 250, 160)]
# Held-back validation crops: regions of the training photographs that no training crop touches
# (same kind of content, unseen pixels), plus one more region of the rocket photograph.
SR_VAL = [("astronaut", 0, 0, 128), ("astronaut", 380, 360, 128), ("coffee", 240, 20, 128),
          ("rocket", 250, 120, 128)]
MS_TRAIN = [("coffee", 100, 100, 128), ("chelsea", 80, 200, 128), ("astronaut", 330, 300, 128)]
MS_VAL = [("rocket", 280, 360, 128)]


def load(name):
    "The named skimage sample as an (H,W,3) uint8 array."
    return getattr(skd, name)()


def crop(name, top, left, size):
    img = load(name)
    out = img[top:top + size, left:left + size]
    assert out.shape[:2] == (size, size), (name, out.shape)
    return out


def srgb_to_linear(v):
    "Inverse sRGB transfer function, v in [0,1]."
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def synthetic_nir(r, g, b):
    """Synthetic near-infrared band from linear RGB in [0,1] (documented in README.md):
    nir = clip(0.5*(r+g) + 2.0*max(g-r, 0) + 0.1, 0, 1).
    Greenish (vegetation-like) pixels get a high NIR response, as leaves do in real NIR; the rest
    follow brightness. It is a stand-in for a real sensor band, for shape and pipeline tests only."""
    return np.clip(0.5 * (r + g) + 2.0 * np.maximum(g - r, 0.0) + 0.1, 0.0, 1.0)


def to_multispectral(rgb_u8):
    "(H,W,3) uint8 sRGB -> (4,H,W) uint16 reflectance-like 0..10000 (R, G, B, NIR)."
    lin = srgb_to_linear(rgb_u8.astype(np.float64) / 255.0)
    r, g, b = lin[..., 0], lin[..., 1], lin[..., 2]
    bands = np.stack([0.8 * r, 0.8 * g, 0.8 * b, synthetic_nir(r, g, b)])
    return np.round(bands * 10000).clip(0, 10000).astype(np.uint16)


def _overlaps(a, b):
    (na, ta, la, sa), (nb, tb, lb, sb) = a, b
    return na == nb and ta < tb + sb and tb < ta + sa and la < lb + sb and lb < la + sa


def main():
    bad = [(v, t) for v in SR_VAL for t in SR_TRAIN if _overlaps(v, t)]
    assert not bad, f"validation crops overlap training crops: {bad}"
    for split, items in (("train", SR_TRAIN), ("val", SR_VAL)):
        d = HERE / "sr" / split
        d.mkdir(parents=True, exist_ok=True)
        for f in d.glob("*.png"): f.unlink()
        for i, (name, t, l, s) in enumerate(items):
            Image.fromarray(crop(name, t, l, s)).save(d / f"{name}_{i:02d}.png", optimize=True)
    for split, items in (("train", MS_TRAIN), ("val", MS_VAL)):
        d = HERE / "multispectral" / split
        d.mkdir(parents=True, exist_ok=True)
        for f in d.glob("*.npy"): f.unlink()
        for i, (name, t, l, s) in enumerate(items):
            np.save(d / f"{name}_{i:02d}.npy", to_multispectral(crop(name, t, l, s)))


if __name__ == "__main__":
    main()
