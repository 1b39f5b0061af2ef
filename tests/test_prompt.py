"""Issue 12: prompt-conditioned generation, trained through the same engine, adherence measured, prompts typed mid-training.

The paths users take: captions beside image folders (both layouts), the captioned-shapes source, `fit()` with the
prompt config, resume from `last.ckpt`, `gan-engine train --preset prompt`, `validate`, `predict --prompt`, the
local `transformers` encoder, and a prompt typed into the inspector while a run trains in the background.
"""
import time, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from gan_engine.cli import main, quickstart_config
from gan_engine.config import ConfigError, load_config
from gan_engine.data import GANDataModule, ImageDataset
from gan_engine.discriminators import build_discriminator
from gan_engine.generators import build_generator
from gan_engine.images import DataError
from gan_engine.inference import load_predictor
from gan_engine.module import GANModule
from gan_engine.shapes import ATTRIBUTES, ShapeSpec, check_batch, parse_prompt
from gan_engine.tasks import PromptTask, build_task
from gan_engine.testing import tiny_config
from gan_engine.text import TextConditioned
from gan_engine.trainer import fit, fit_in_background

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data_samples"
QUIET = ["Trainer.enable_progress_bar=false", "Trainer.enable_model_summary=false"]
pytestmark = [pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
              pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
              pytest.mark.filterwarnings("ignore:.*exists and is not empty.*"),
              pytest.mark.filterwarnings("ignore:.*smaller than the logging interval.*")]


def tiny_prompt(path, *overrides):
    "The tiny prompt config (16-px captioned shapes, 2-level U-Net, 16-d hashed encoder) writing its run under `path`."
    return tiny_config(SAMPLES, [f"Logging.output_dir={path}", *QUIET, *overrides], task="prompt")


# ------------------------------------------------------------------------------------------------ captions
def _captioned(tmp_path, layout, n=4, size=(40, 48)):
    d = tmp_path / "imgs"; d.mkdir()
    rows = []
    for i in range(n):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8)).save(d / f"im{i}.png")
        prompts = [f"picture {i} first", f"picture {i} second", f"picture {i} third"]
        if layout == "txt": (d / f"im{i}.txt").write_text("\n".join(prompts) + "\n")
        rows += [(f"im{i}.png", q) for q in prompts]
    if layout == "csv": pd.DataFrame(rows, columns=["file", "prompt"]).to_csv(d / "captions.csv", index=False)
    if layout == "jsonl":
        import json
        by = {}
        for f, q in rows: by.setdefault(f, []).append(q)
        (d / "captions.jsonl").write_text("".join(json.dumps({"file": f, "prompt": qs}) + "\n" for f, qs in by.items()))
    return d


def folder_cfg(d, *ov):
    return load_config({"Model": {"task": "prompt", "prompt_input": "masked"}, "Generator": {"unet_depth": 2, "n_channels": 8},
                        "Data": {"train_dir": str(d), "val_fraction": 0.25, "lr_patch_size": 16, "train_batch_size": 2,
                                 "val_batch_size": 2}}, list(ov))


@pytest.mark.parametrize("layout", ["txt", "csv", "jsonl"])
def test_captions_in_every_layout_reach_the_batch_one_drawn_per_step_fixed_for_validation(tmp_path, layout):
    dm = GANDataModule(folder_cfg(_captioned(tmp_path, layout)))
    dm.setup()
    tr, va = dm.train_dataset, dm.val_dataset
    assert len(tr) == 3 and len(va) == 1
    drawn = {tr[(0, s)]["prompt"] for s in range(40)}
    stem = tr.files[0].stem[2:]
    assert drawn == {f"picture {stem} first", f"picture {stem} second", f"picture {stem} third"}   # all three, per step
    assert len({va[0]["prompt"] for _ in range(5)}) == 1                                           # validation: fixed
    b = next(iter(dm.train_dataloader()))
    assert isinstance(b["prompt"], list) and len(b["prompt"]) == len(b["hr"]) and b["mask"].shape[1] == 1


def test_missing_or_empty_captions_fail_naming_the_files_or_are_skipped(tmp_path):
    d = _captioned(tmp_path, "txt")
    (d / "im1.txt").write_text("  \n\n"); (d / "im2.txt").unlink()
    with pytest.raises(DataError, match=r"2 have none .*im1\.png, im2\.png"):
        GANDataModule(folder_cfg(d)).setup()
    with pytest.warns(UserWarning, match=r"2 image\(s\) of `Data.train_dir` have no caption"):
        dm = GANDataModule(folder_cfg(d, "Data.captions.on_missing=skip", "Data.val_fraction=0.5")); dm.setup()
    assert sorted(f.name for f in dm.train_dataset.files + dm.val_dataset.files) == ["im0.png", "im3.png"]
    (d / "captions.csv").write_text("image,words\nim0.png,x\n")
    with pytest.raises(DataError, match="to have a prompt column"): GANDataModule(folder_cfg(d)).setup()


def test_prompt_config_checks_name_the_keys():
    with pytest.raises(ConfigError, match="Model.cond_dim: 12, but the prompt embedding has Text.dim 64"):
        load_config({"Model": {"task": "prompt", "cond_dim": 12}})
    with pytest.raises(ConfigError, match="Text.path: required with Text.encoder 'transformers'"):
        load_config({"Model": {"task": "prompt"}, "Text": {"encoder": "transformers"}})
    with pytest.raises(ConfigError, match=r"Data.shapes.held_out: \['red', 'hexagon'\]"):
        load_config({"Model": {"task": "prompt"}, "Data": {"source": "shapes", "shapes": {"held_out": [["red", "hexagon"]]}}})
    with pytest.raises(ConfigError, match="Data.source: 'shapes' draws captioned images for Model.task 'prompt'"):
        load_config({"Data": {"source": "shapes"}})
    with pytest.raises(ConfigError, match="Model.prompt_dropout: 0.2, but Model.task 'sr' has no prompts"):
        load_config({"Model": {"prompt_dropout": 0.2}})
    with pytest.raises(ConfigError, match="Text.encoder: unknown text encoder 'hashd'.*did you mean 'hashed'"):
        load_config({"Model": {"task": "prompt"}, "Text": {"encoder": "hashd"}})
    cfg = load_config({"Model": {"task": "prompt"}, "Text": {"dim": 24}})
    assert (cfg.Model.cond_dim, cfg.Generator.model_type, cfg.Generator.extra_in_channels) == (24, "latent", 2)


# ------------------------------------------------------------------------------------------------ networks
def _randomise(net):
    "FiLM and projection layers start at zero (identity): give every weight a value so prompts matter."
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters(): p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net.eval()


@pytest.mark.parametrize("given,gen,size", [("noise", "latent", 16), ("noise", "unet", 16), ("masked", "unet", 16), ("masked", "srresnet", 12),
                                            ("lr", "srresnet", 8), ("lr", "esrgan", 8)])
def test_every_generator_is_conditioned_by_the_prompt(given, gen, size):
    cfg = load_config({"Model": {"task": "prompt", "prompt_input": given}, "Text": {"dim": 16, "buckets": 256},
                       "Generator": {"model_type": gen, "n_channels": 8, "n_blocks": 1, "unet_depth": 2, "growth_channels": 4},
                       "Data": {"scale": 2, "lr_patch_size": size}})
    g = _randomise(build_generator(cfg))
    assert isinstance(g, TextConditioned) and g.cond_dim == 16
    task = build_task(cfg)
    hr = torch.rand(2, 3, size * (2 if given == "lr" else 1), size * (2 if given == "lr" else 1))
    batch = {"hr": hr, "lr": torch.rand(2, 3, size, size), "mask": (torch.rand(2, 1, *hr.shape[-2:]) > 0.5).float(),
             "prompt": ["a small red circle", "a large blue square"], "meta": [{"index": 0}, {"index": 1}]}
    x, prompts = task.generator_input(batch)
    with torch.no_grad():
        a, b = g(x, prompts), g(x, ["a large green triangle", "a small red circle"])
    assert a.shape == hr.shape
    assert not torch.allclose(a[0], b[0], atol=1e-4)                                  # another prompt, another image
    with torch.no_grad(): assert torch.allclose(g(x[:1], prompts[:1]), a[:1], atol=1e-5)   # sample by sample


@pytest.mark.parametrize("model", ["standard", "patchgan", "unet"])
def test_every_discriminator_projects_its_own_prompt_embedding(model):
    cfg = load_config({"Model": {"task": "prompt"}, "Text": {"dim": 16, "buckets": 256}, "Data": {"lr_patch_size": 32},
                       "Discriminator": {"model_type": model, "base_channels": 8, "n_blocks": 3 if model != "standard" else 4,
                                         "linear_size": 16}})
    d = _randomise(build_discriminator(cfg))
    assert isinstance(d, TextConditioned) and d.encoder is not build_generator(cfg).encoder
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a, b = d(x, ["a red circle", "a red circle"]), d(x, ["a red circle", "a blue square"])
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])


def test_prompt_dropout_reaches_generator_and_discriminator_alike(tmp_path, monkeypatch):
    seen = {"g": [], "d": []}
    orig_g, orig_d = TextConditioned.forward, None
    def spy(self, x, cond=None, **kw):
        if isinstance(cond, list): seen["d" if "return_features" in kw else "g"].append(list(cond))
        return orig_g(self, x, cond, **kw)
    monkeypatch.setattr(TextConditioned, "forward", spy)
    fit(tiny_prompt(tmp_path / "run", "Model.prompt_dropout=1.0", "Training.max_steps=3", "Training.g_pretrain_steps=1",
                    "Training.val_every_n_steps=0", "Trainer.limit_val_batches=0"))
    assert seen["g"] and seen["d"] and all(q == "" for qs in seen["g"] + seen["d"] for q in qs)
    task = PromptTask(dropout=0.5)
    torch.manual_seed(0)
    kept = task.generator_input({"hr": torch.zeros(400, 1, 2, 2), "prompt": ["x"] * 400}, train=True)[1]
    assert 150 < kept.count("") < 250
    assert task.generator_input({"hr": torch.zeros(4, 1, 2, 2), "prompt": ["x"] * 4})[1] == ["x"] * 4   # never outside training


# ------------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    "A tiny prompt run through fit(): adversarial from step 2, validations at 3 and 6."
    d = tmp_path_factory.mktemp("prompt")
    return fit(tiny_prompt(d / "run", "Training.max_steps=6", "Training.g_pretrain_steps=2", "Training.val_every_n_steps=3",
                           "Model.prompt_dropout=0.2", "Logging.images_every_n_steps=3", "Trainer.log_every_n_steps=1"))


def test_fit_logs_adherence_per_attribute_and_on_held_out_pairs(trained):
    df = pd.read_csv(trained.run_dir / "metrics.csv")
    for a in (*ATTRIBUTES, "all"):
        for sfx in ("", "_heldout"):
            v = df[f"val/adherence_{a}{sfx}"].dropna()
            assert len(v) == 2 and ((v >= 0) & (v <= 1)).all()
    assert df["train/loss_d"].notna().any() and df["train/l1"].notna().any()
    assert trained.module.d_step > 0


def test_validation_adherence_matches_the_checker_on_the_validation_outputs(trained):
    m = trained.module.eval()
    dm = GANDataModule(m.cfg); dm.setup()
    right, held, n_held = {a: 0 for a in ATTRIBUTES}, 0, 0
    for b in dm.val_dataloader():
        with torch.no_grad():
            out = m(prompt=b["prompt"], noise=m.task.noise(b)).clamp(0, 1)
        for r, meta in zip(check_batch(out), b["meta"]):
            for a in ATTRIBUTES: right[a] += r[a] == meta["spec"][a]
    n = len(dm.val_dataset)
    got = {a: float(trained.trainer.validate(m, datamodule=dm, verbose=False)[0][f"val/adherence_{a}"]) for a in ["colour"]}
    assert abs(got["colour"] - right["colour"] / n) < 1e-6


def test_panels_carry_prompts_and_the_embedding_map_is_logged(trained):
    imgs = sorted(p.name for p in (trained.run_dir / "images").iterdir())
    assert any(n.startswith("val_panels") for n in imgs) and any(n.startswith("val_embeddings") for n in imgs)
    prompts, emb = trained.module.prompt_embeddings()
    assert len(prompts) == 180 and emb.shape == (180, 16)
    assert len(trained.module.val_prompts) == 2 and all(parse_prompt(q) is not None for q in trained.module.val_prompts)


def test_resume_from_last_ckpt_continues_bit_exactly(tmp_path):
    ov = ["Training.max_steps=6", "Training.g_pretrain_steps=2", "Training.val_every_n_steps=0", "Trainer.limit_val_batches=0",
          "Model.prompt_dropout=0.3", "Callbacks.checkpoint.every_n_steps=3"]
    import lightning as L
    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, *a):
            if trainer.global_step == 3: trainer.should_stop = True
    full = fit(tiny_prompt(tmp_path / "a", *ov))
    part = fit(tiny_prompt(tmp_path / "b", *ov), callbacks=[StopAt()])
    assert part.module.g_step == 3
    resumed = fit(tiny_prompt(tmp_path / "b", *ov), resume=part.run_dir / "checkpoints" / "last.ckpt")
    assert resumed.module.g_step == 6
    for k, v in full.module.state_dict().items():     # generator, its text encoder, EMA, discriminator and its encoder
        assert torch.equal(v, resumed.module.state_dict()[k]), k


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_preset_prompt_trains_validates_previews_and_predicts(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    small = ["Generator.n_channels=8", "Discriminator.base_channels=8", "Training.max_steps=4", "Training.g_pretrain_steps=2",
             "Training.val_every_n_steps=2", "Schedulers.g_warmup_steps=0", "Data.shapes.val_count=8", *QUIET]
    assert main(["train", "--preset", "prompt", f"Logging.output_dir={tmp_path}/run", *small]) == 0
    out = capsys.readouterr().out
    assert "Prompt adherence (read back by the shapes checker): colour" in out and "Held-out colour-shape pairs" in out
    cfg = load_config(tmp_path / "run" / "config.yaml")
    assert (cfg.Model.task, cfg.Data.source, cfg.Callbacks.checkpoint.monitor) == ("prompt", "shapes", "val/adherence_all")
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert main(["validate", "--ckpt", ckpt]) == 0
    assert any(l.startswith("val/adherence_shape_heldout: ") for l in capsys.readouterr().out.splitlines())
    assert main(["predict", "--ckpt", ckpt, "--prompt", "a small red triangle in the top left", "--prompt", "a large cyan circle",
                 "--count", "2", "--seed", "5", "--output", str(tmp_path / "gen")]) == 0
    names = sorted(p.name for p in (tmp_path / "gen").iterdir())
    assert names == ["a_large_cyan_circle_s5.png", "a_large_cyan_circle_s6.png", "a_small_red_triangle_in_the_top_left_s5.png",
                     "a_small_red_triangle_in_the_top_left_s6.png"]
    img = np.asarray(Image.open(tmp_path / "gen" / names[0]))
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    p = load_predictor(ckpt)
    again = (p.generate(["a large cyan circle"], seed=5).numpy()[0] * 255).round().clip(0, 255).astype(np.uint8)
    assert np.array_equal(np.moveaxis(again, 0, -1), img)                          # the file is what the model makes
    assert not torch.equal(p.generate(["a large cyan circle"], seed=5), p.generate(["a large cyan circle"], seed=6))
    capsys.readouterr()
    assert main(["predict", "--ckpt", ckpt, "--output", str(tmp_path / "none")]) == 2
    assert "--prompt: required for this prompt model" in capsys.readouterr().err and not (tmp_path / "none").exists()
    assert main(["preview", "--preset", "prompt", f"Logging.output_dir={tmp_path}/pv"]) == 0
    out = capsys.readouterr().out
    assert "Prompts: “" in out and "columns: image" in out


# ------------------------------------------------------------------------------------------------ transformers
def test_a_local_transformers_encoder_conditions_training(tmp_path):
    pytest.importorskip("transformers")
    from transformers import CLIPTextConfig, CLIPTextModel
    from test_text import TINY_TEXT, save_tokenizer           # a word-level tokenizer built locally (no download)
    folder = tmp_path / "clip"; folder.mkdir()
    CLIPTextModel(CLIPTextConfig(vocab_size=save_tokenizer(folder), **TINY_TEXT)).save_pretrained(folder)
    run = fit(tiny_prompt(tmp_path / "run", "Text.encoder=transformers", f"Text.path={folder}", "Training.max_steps=3",
                          "Training.g_pretrain_steps=1", "Training.val_every_n_steps=0", "Trainer.limit_val_batches=0"))
    enc = run.module.generator.encoder
    assert type(enc).__name__ == "TransformersTextEncoder" and not enc.trainable
    frozen = [p for n, p in run.module.generator.named_parameters() if n.startswith("encoder.model.")]
    assert frozen and not any(p.requires_grad for p in frozen)
    p = load_predictor(run.run_dir / "checkpoints" / "last.ckpt")
    assert p.generate(["a red circle"], size=16).shape == (1, 3, 16, 16)


# ------------------------------------------------------------------------------------------------ the inspector
def test_a_typed_prompt_while_training_runs_in_the_background(tmp_path):
    from gan_engine.capture import SampleCapture
    from gan_engine.widgets import Inspector
    cap = SampleCapture(every_n_steps=1000, num_samples=2)
    session = fit_in_background(tiny_prompt(tmp_path / "run", "Training.max_steps=100000", "Training.val_every_n_steps=0",
                                            "Trainer.limit_val_batches=0"), callbacks=[cap])
    try:
        t0 = time.time()
        while cap.latest is None and time.time() - t0 < 60: time.sleep(0.05)
        ins = Inspector(cap)
        assert ins.prompt_row.layout.display is None and ins.state["panels"] == ["sr", "hr"]
        assert "prompt:" in ins.prompt.value
        ins.prompt_seed.value = 7
        ins.prompt_text.value = "a large green square in the centre"           # typing and Enter run it
        assert "queued" in ins.message.value
        while not cap.prompt_tries and time.time() - t0 < 60: time.sleep(0.05)
        assert session.running
        ins.refresh()
        st, t = ins.state, cap.prompt_tries[-1]
        assert (st["typed_prompt"], st["typed_seed"]) == ("a large green square in the centre", 7)
        assert t.step > 0 and t.image.shape == (1, 3, 16, 16) and t.image_raw is not None
        assert set(t.readings[0]) == set(ATTRIBUTES) and set(t.matches) == set(ATTRIBUTES)
        assert ins.tried.value[:4] == b"\x89PNG" and "read back" in ins.tried_info.value
        ins.prompt_text.value = ""; ins.generate_button.click()                # the empty prompt: unconditional
        while len(cap.prompt_tries) < 2 and time.time() - t0 < 60: time.sleep(0.05)
        assert cap.prompt_tries[-1].prompt == "" and cap.prompt_tries[-1].matches is None
    finally:
        session.stop(wait=True, timeout=60)
    assert not session.running
    e = cap.try_prompt("a small red circle in the top left", seed=7)         # after training: served at once
    g = session.module.generate(["a small red circle in the top left"], seed=7)
    assert torch.equal(e.image, g)
