"""Issue 13 (first part): OpenSR-SRGAN (0.4.x, 0.5.x) config files load as their users write them.

Configs of the kind that project ships (its four flat YAMLs and a Hydra-composed one, in both release lines) and
the keys its code reads beyond them: each loads, every key is honoured or named in one ConfigWarning, and the
standard discriminator it builds is OpenSR-SRGAN's network (same parameter shapes and count).
"""
import copy, warnings

import pytest
import torch

from gan_engine.config import ConfigError, ConfigWarning, load_config, yaml_load
from gan_engine.data import check_paths
from gan_engine.discriminators import build_discriminator
from gan_engine.generators import build_generator
from gan_engine.opensr import OPENSR_KEYS, is_opensr_format

BASE = """
Data: {train_batch_size: 6, val_batch_size: 4, num_workers: 6, prefetch_factor: 2, dataset_type: SEN2NAIP,
       normalization: normalise_10k}
Model: {in_bands: 4, continue_training: false, load_checkpoint: false}
Training:
  device: cuda
  gpus: [0, 1]
  max_epochs: 9999
  val_check_interval: 1.0
  limit_val_batches: 100
  pretrain_g_only: true
  g_pretrain_steps: 5000
  adv_loss_ramp_steps: 500
  label_smoothing: true
  EMA: {enabled: false, decay: 0.999, update_after_step: 0, use_num_updates: true}
  Losses: {adv_loss_beta: 0.001, adv_loss_schedule: cosine, adv_loss_type: bce, relativistic_average_d: false,
           r1_gamma: 0.0, l1_weight: 1.0, sam_weight: 0.0, perceptual_weight: 0.05, perceptual_metric: vgg,
           fixed_idx: [0, 1, 2], tv_weight: 0.0, max_val: 1.0, ssim_win: 11}
Generator: {model_type: esrgan, block_type: rrdb, large_kernel_size: 9, small_kernel_size: 3, n_channels: 64,
            n_blocks: 16, scaling_factor: 4, growth_channels: 32, res_scale: 0.2, use_icnr: true}
Discriminator: {model_type: esrgan, n_blocks: 8, use_spectral_norm: false, base_channels: 64, linear_size: 1024}
Optimizers: {optim_g_lr: 1.0e-05, optim_d_lr: 5.0e-05, gradient_clip_val: 0.0, betas: [0.0, 0.99], eps: 1.0e-07,
             weight_decay_g: 0.0, weight_decay_d: 0.0}
Schedulers: {metric_g: val_metrics/l1, metric_d: validation/DISC_adversarial_loss, patience_g: 10, patience_d: 10,
             factor_g: 0.5, factor_d: 0.5, g_warmup_steps: 0, g_warmup_type: linear}
Logging: {num_val_images: 5, wandb: {enabled: true, entity: opensr, project: SRGAN_10m}}
"""


def variant(**changes):
    "The base file with dotted keys replaced (None removes a key)."
    c = yaml_load(BASE)
    for key, v in changes.items():
        *head, last = key.split("__")
        node = c
        for h in head: node = node.setdefault(h, {})
        if v is None: node.pop(last, None)
        else: node[last] = v
    return c


def load(c):
    "Load a raw config; return it and the keys named in ConfigWarnings."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(copy.deepcopy(c))
    return cfg, [str(w.message).split("=")[0].split(" ")[0] for w in caught if issubclass(w.category, ConfigWarning)]


SHIPPED = {   # what its four shipped files differ in (0.5.x values; 0.4.x: metric_d discriminator/adversarial_loss)
    "10m": {},
    "20m": dict(Data__dataset_type="S2_6b", Model__in_bands=6, Generator__model_type="SRResNet", Generator__block_type="rcab",
                Generator__n_channels=96, Generator__n_blocks=32, Generator__scaling_factor=8, Generator__use_icnr=None,
                Discriminator__model_type="standard", Training__Losses__fixed_idx=None, Optimizers__gradient_clip_val=1.0,
                Schedulers__g_warmup_type="cosine", Schedulers__g_warmup_steps=2500),
    "training_example": dict(Data__dataset_type="ExampleDataset", Generator__model_type="SRResNet", Generator__n_channels=32,
                             Generator__n_blocks=4, Discriminator__model_type="standard", Discriminator__n_blocks=2,
                             Discriminator__base_channels=32, Training__max_epochs=10, Training__val_check_interval=0.25),
    "playground": dict(Data__dataset_type="ExampleDataset", Training__device="cpu", Training__gpus=[0],
                       Training__pretrain_g_only=False, Training__g_pretrain_steps=0, Generator__block_type="standard"),
    "0.4 metric_d": dict(Schedulers__metric_d="discriminator/adversarial_loss"),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_configs_load_with_each_unhonoured_key_named(name):
    c = variant(**SHIPPED[name])
    assert is_opensr_format(c)
    cfg, named = load(c)
    assert "Data.dataset_type" in named                                   # datasets are folders here
    assert cfg.Trainer["max_epochs"] == c["Training"]["max_epochs"] and cfg.Training.max_steps == -1
    assert cfg.Data.scale == cfg.Generator.scaling_factor == c["Generator"]["scaling_factor"]   # its factor is the scale
    assert cfg.Schedulers.metric_g == "val/l1" and cfg.Schedulers.metric_d == "val/l1"
    assert cfg.Logging.logger == "wandb" and cfg.Data.prefetch_factor == 2
    if "fixed_idx" in c["Training"]["Losses"]: assert cfg.Training.Losses.perceptual_bands == [0, 1, 2]
    assert cfg.Generator.model_type == {"esrgan": "opensr_esrgan"}.get(c["Generator"]["model_type"].lower(), "opensr_srresnet")
    assert cfg.Discriminator.model_type == "opensr_" + c["Discriminator"]["model_type"]
    if c["Discriminator"]["model_type"] == "standard":
        assert ("Discriminator.base_channels" in named) == (c["Discriminator"].get("base_channels", 64) != 64)
    g, d = build_generator(cfg), build_discriminator(cfg)                # its networks, at its sizes
    assert type(g).__module__ == type(d).__module__ == "gan_engine.opensr_nets"


def test_every_other_key_of_the_format_is_honoured_or_named():
    extra = dict(Data__batch_size=16, Data__root_dir="/data/pairs", Data__sen2naip_taco_file="x.taco",
                 Data__sen2naip_val_fraction=0.1, Data__sen2naip_phase="train", Training__perceptual_loss_weight=0.2,
                 Training__Losses__content_loss_weight=1.0, Training__Losses__perceptual_loss_weight=0.1,
                 Training__Losses__randomize_bands=True, Generator__out_channels=3, Generator__noise_dim=128, Schedulers__metric="val_metrics/psnr",
                 Schedulers__threshold=1e-3, Schedulers__cooldown=0, Schedulers__min_lr=1e-7,
                 Schedulers__gradient_clip_val=0.5, TruncatedVGG={"i": 4, "j": 2})
    c = variant(**extra)
    for k in ("train_batch_size", "val_batch_size"): c["Data"].pop(k)
    c["Training"]["Losses"].pop("perceptual_weight"); c["Optimizers"].pop("gradient_clip_val")
    c["Schedulers"].pop("metric_g"); c["Schedulers"].pop("metric_d")
    cfg, named = load(c)
    assert (cfg.Data.train_batch_size, cfg.Data.val_batch_size) == (16, 16)
    assert (cfg.Data.train_dir, cfg.Data.train_lr_dir, cfg.Data.val_dir, cfg.Data.val_lr_dir) == (
        "/data/pairs/train/HR", "/data/pairs/train/LR", "/data/pairs/val/HR", "/data/pairs/val/LR")
    assert cfg.Training.Losses.perceptual_weight == 0.2 and cfg.Model.out_bands == 3
    assert (cfg.Schedulers.metric_g, cfg.Schedulers.metric_d) == ("val/psnr", "val/psnr")
    assert cfg.Optimizers.gradient_clip_val == 0.5 and dict(cfg.Training.Losses.perceptual_layers) == {"relu4_2": 1.0}
    dropped = {k for k, (action, _) in OPENSR_KEYS.items() if action == "drop"}
    assert dropped <= set(named), dropped - set(named)
    assert len(named) == len(set(named))                                  # one warning per key


@pytest.mark.parametrize("mt,bt,want", [("SRResNet", "rcab", ("opensr_srresnet", "rcab")), ("sr-resnet", None, ("opensr_srresnet", "standard")),
                                        ("RRDBNet", None, ("opensr_esrgan", "rrdb")), ("attention", None, ("opensr_srresnet", "rcab")),
                                        ("SRResNet", "large_kernel", ("opensr_srresnet", "lka")), ("srresnet", "vanilla", ("opensr_srresnet", "standard"))])
def test_generator_and_block_names_are_read_with_their_aliases(mt, bt, want):
    cfg, _ = load(variant(Generator__model_type=mt, Generator__block_type=bt))
    assert (cfg.Generator.model_type, cfg.Generator.block_type) == want


def test_values_wrong_there_too_stay_errors():
    with pytest.raises(ConfigError, match="Generator.scaling_factor"): load(variant(Generator__scaling_factor=5))
    with pytest.raises(ConfigError, match="Training.Losses.perceptual_bands"): load(variant(Training__Losses__fixed_idx=[0, 1]))
    with pytest.raises(ConfigError, match="Training.Losses.adv_loss_type"): load(variant(Training__Losses__adv_loss_type="hing"))


def test_a_gan_engine_config_is_not_read_as_opensr():
    c = {"Discriminator": {"base_channels": 32}, "Data": {"scale": 2}}
    assert not is_opensr_format(c)
    cfg, named = load(c)
    assert (cfg.Discriminator.base_channels, cfg.Discriminator.model_type) == (32, "standard")


@pytest.mark.parametrize("bands,sn", [(4, False), (3, True), (6, False)])
def test_standard_discriminator_is_opensr_srgan_s_network(bands, sn):
    cfg, _ = load(variant(Model__in_bands=bands, Discriminator__model_type="standard", Discriminator__base_channels=32,
                          Discriminator__linear_size=512, Discriminator__use_spectral_norm=sn))
    d = build_discriminator(cfg)
    # its network (read from its sources): 3x3 convs 64,64,128,128,256,256,512,512 (stride 1/2), a bias on each, batch
    # norm after all but the first, 6x6 average pooling, Linear(512*36 -> 1024), Linear(1024 -> 1)
    chans, shapes, cin = [64, 64, 128, 128, 256, 256, 512, 512], [], bands
    for i, c in enumerate(chans):
        shapes += [(c, cin, 3, 3), (c,)] + ([(c,), (c,)] if i else []); cin = c
    shapes += [(1024, 512 * 36), (1024,), (1, 1024), (1,)]
    got = [tuple(p.shape) for p in d.parameters()]
    assert sorted(got) == sorted(shapes)
    assert sum(p.numel() for p in d.parameters()) == {4: 23_566_081, 3: 23_565_505, 6: 23_567_233}[bands]
    assert d(torch.zeros(2, bands, 32, 32)).shape == (2, 1)


def test_opensr_spectral_norm_default_applies_only_to_its_files():
    c = variant(Discriminator__model_type="standard", Discriminator__use_spectral_norm=None)
    cfg, _ = load(c)
    assert "conv_blocks.0.conv_block.0.weight_orig" in build_discriminator(cfg).state_dict()   # its default: spectral norm on


def test_vgg_weights_from_torchvision_s_cache_for_an_opensr_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    c = variant(Data__train_batch_size=2)
    cfg, _ = load(c)
    cfg = cfg.override(f"Data.train_dir={tmp_path}")
    with pytest.raises(ConfigError, match=r"torchvision's cached file `.*vgg19-dcbb9e9d.pth` does not exist"):
        check_paths(cfg)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth").write_bytes(b"")
    check_paths(cfg)


# ------------------------------------------------------------------------ checkpoints written by OpenSR-SRGAN itself
import numpy as np
from pathlib import Path

from gan_engine.checkpoint import read_checkpoint
from gan_engine.cli import main
from gan_engine.inference import load_predictor
from gan_engine.opensr_import import import_opensr

FIX = Path(__file__).resolve().parent / "fixtures" / "opensr"   # made by opensr-srgan 0.4.3 (README.md there)
MADE = [("srresnet_standard", "srresnet_standard.ckpt"), ("srresnet_rcab", "srresnet_rcab.ckpt"), ("esrgan", "esrgan.full.ckpt")]


@pytest.mark.parametrize("name,ckpt", MADE)
def test_opensr_checkpoints_import_and_predict_what_opensr_srgan_predicted(tmp_path, name, ckpt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = import_opensr(FIX / ckpt, FIX / f"{name}.yaml", tmp_path / "run", value_range=(0.0, 1.0))
    x = torch.from_numpy(np.load(FIX / f"{name}.input.npy"))
    for raw, ref in ((False, "output_ema"), (True, "output_raw")):
        p = load_predictor(run / "checkpoints" / "last.ckpt", raw=raw)
        with torch.no_grad(): y = p.generator(x)
        want = torch.from_numpy(np.load(FIX / f"{name}.{ref}.npy"))
        assert y.shape == want.shape and torch.allclose(y, want, atol=1e-5), (ref, float((y - want).abs().max()))
    out = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert (out["gan_engine"]["g_step"], out["gan_engine"]["d_step"]) == (1, 1)          # one batch: a D and a G step


def test_cli_import_then_predict_validate_and_resume(tmp_path, capsys):
    data = tmp_path / "data"
    for split, n in (("train", 4), ("val", 2)):
        (data / split).mkdir(parents=True)
        for i in range(n): np.save(data / split / f"{i}.npy", np.random.default_rng(i).random((4, 24, 24), dtype=np.float32))
    run = tmp_path / "run"
    assert main(["import-opensr", str(FIX / "esrgan.full.ckpt"), "--config", str(FIX / "esrgan.yaml"), "--output", str(run),
                 "--value-range", "0", "1", f"Data.train_dir={data / 'train'}", f"Data.val_dir={data / 'val'}",
                 "Data.lr_patch_size=12", "Trainer.max_epochs=-1", "Trainer.enable_progress_bar=false"]) == 0
    out = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert len(out["optimizer_states"]) == 2 and out["optimizer_states"][0]["state"]   # its Adam moments carried over
    inp = tmp_path / "in"; inp.mkdir(); np.save(inp / "x.npy", np.load(FIX / "esrgan.input.npy")[0])
    assert main(["predict", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--input", str(inp), "--output", str(tmp_path / "o")]) == 0
    got, want = np.load(tmp_path / "o" / "x.npy"), np.clip(np.load(FIX / "esrgan.output_ema.npy")[0], 0, 1)
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-5                 # `gan-engine predict` = OpenSR-SRGAN's EMA
    assert main(["validate", "--ckpt", str(run / "checkpoints" / "last.ckpt")]) == 0
    assert any(l.startswith("val/psnr: ") for l in capsys.readouterr().out.splitlines())
    assert main(["train", "--resume", str(run / "checkpoints" / "last.ckpt"), "Training.max_steps=3"]) == 0
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["gan_engine"]["g_step"] == 3
    assert main(["import-opensr", str(FIX / "esrgan.full.ckpt"), "--config", str(FIX / "esrgan.yaml"), "--output", str(run)]) == 2


def test_import_needs_no_vgg_weights_and_keeps_the_perceptual_loss_in_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    c = yaml_load((FIX / "srresnet_rcab.yaml").read_text())
    del c["Training"]["Losses"]["perceptual_weight"]                     # its default: 0.1, a VGG loss
    with pytest.warns(UserWarning, match="no VGG-19 weights here"):
        run = import_opensr(FIX / "srresnet_rcab.ckpt", c, tmp_path / "run", value_range=(0.0, 1.0))
    assert load_config(run / "config.yaml").Training.Losses.perceptual_weight == 0.1
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["hyper_parameters"]["config"]["Training"]["Losses"]["perceptual_weight"] == 0.1
    x = torch.from_numpy(np.load(FIX / "srresnet_rcab.input.npy"))
    with torch.no_grad(): y = load_predictor(run / "checkpoints" / "last.ckpt").generator(x)
    assert torch.allclose(y, torch.from_numpy(np.load(FIX / "srresnet_rcab.output_ema.npy")), atol=1e-5)
