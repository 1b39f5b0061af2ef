"Config validation, overrides, snapshots and OpenSR-SRGAN import (dense cases beside nbs/00_config.ipynb)."
import warnings

import numpy as np
import torch
import pytest
import yaml
from PIL import Image

from gan_engine.config import (ConfigError, ConfigWarning, SCHEMA, describe_config, load_config, parse_override,
                               save_config)
from gan_engine.data import check_paths
from gan_engine.registry import Registry

# Each bad config, the dotted key its message must name, and a fragment saying what is allowed.
BAD = [
    ({"Data": {"scale": 5}}, "Data.scale", "not one of [2, 3, 4, 8]"),
    ({"Data": {"lr_patch_size": 2}}, "Data.lr_patch_size", "below the minimum 4"),
    ({"Data": {"train_batch_size": 0}}, "Data.train_batch_size", "below the minimum 1"),
    ({"Data": {"val_fraction": 1.5}}, "Data.val_fraction", "above the maximum 0.9"),
    ({"Data": {"value_range": [10, 0]}}, "Data.value_range", "low < high"),
    ({"Data": {"augment": {"hflip": "yes"}}}, "Data.augment.hflip", "true or false"),
    ({"Data": {"normalization": {"lr": "zero_onne"}}}, "Data.normalization.lr", "did you mean 'zero_one'"),
    ({"Data": {"normalisation": {}}}, "Data.normalisation", "did you mean 'normalization'"),
    ({"Model": {"task": "superres"}}, "Model.task", "'sr', 'inpaint', 'prompt'"),
    ({"Model": {"in_bands": 0}}, "Model.in_bands", "below the minimum 1"),
    ({"Generator": {"block_type": "rdb"}}, "Generator.block_type", "did you mean 'rrdb'"),
    ({"Generator": {"model_type": "srresnett"}}, "Generator.model_type", "did you mean 'srresnet'"),
    ({"Generator": {"n_blocks": 2.5}}, "Generator.n_blocks", "not an integer"),
    ({"Generator": {"scaling_factor": 2}, "Data": {"scale": 4}}, "Generator.scaling_factor", "differs from Data.scale 4"),
    ({"Discriminator": {"model_type": "patchgann"}}, "Discriminator.model_type", "did you mean 'patchgan'"),
    ({"Discriminator": {"norm": "layer"}}, "Discriminator.norm", "'batch', 'instance', 'none'"),
    ({"Training": {"precision": 64}}, "Training.precision", "[32, 16, 'bf16']"),
    ({"Training": {"max_steps": -5}}, "Training.max_steps", "below the minimum -1"),
    ({"Training": {"adv_loss_ramp_steps": -1}}, "Training.adv_loss_ramp_steps", "below the minimum 0"),
    ({"Training": {"d_update_interval": 0}}, "Training.d_update_interval", "below the minimum 1"),
    ({"Training": {"EMA": {"decay": 1.0}}}, "Training.EMA.decay", "must be below 1.0 (allowed: 0.0 <= value < 1.0)"),
    ({"Training": {"EMA": {"decay": "high"}}}, "Training.EMA.decay", "not a number"),
    ({"Training": {"Losses": {"adv_loss_type": "hinj"}}}, "Training.Losses.adv_loss_type", "did you mean 'hinge'"),
    ({"Training": {"Losses": {"adv_loss_type": "wasserstein", "relativistic_average_d": True}}},
     "Training.Losses.relativistic_average_d", "not defined for adv_loss_type 'wasserstein'"),
    ({"Training": {"Losses": {"perceptual_bands": [0, 1]}}}, "Training.Losses.perceptual_bands", "3 band indices"),
    ({"Training": {"Losses": {"ssim_win": 8}}}, "Training.Losses.ssim_win", "must be odd"),
    ({"Training": {"Losses": {"l1_wieght": 1.0}}}, "Training.Losses.l1_wieght", "did you mean 'l1_weight'"),
    ({"Optimizers": {"betas": [0.9]}}, "Optimizers.betas", "two numbers"),
    ({"Optimizers": {"gradient_clip_algorithm": "nrom"}}, "Optimizers.gradient_clip_algorithm", "did you mean 'norm'"),
    ({"Schedulers": {"decay": "step"}}, "Schedulers.decay", "'plateau', 'cosine', 'none'"),
    ({"Schedulers": {"decay": "cosine"}, "Training": {"max_steps": -1}}, "Schedulers.decay", "needs Training.max_steps > 0"),
    ({"Schedulers": {"decay": "cosine", "g_warmup_steps": 50}, "Training": {"max_steps": 40}}, "Schedulers.g_warmup_steps", "must end before"),
    ({"Callbacks": {"checkpoint": {"mode": "maximum"}}}, "Callbacks.checkpoint.mode", "did you mean 'max'"),
    ({"Logging": {"logger": "wanb"}}, "Logging.logger", "did you mean 'wandb'"),
    ({"Logging": {"display_bands": [0, 1, 7]}}, "Logging.display_bands", "band indices in [0, 2]"),
    ({"Trainer": {"max_epoch": 3}}, "Trainer.max_epoch", "did you mean 'max_epochs'"),
    ({"Trainer": {"max_steps": 5}, "Training": {"max_steps": 6}}, "Trainer.max_steps", "conflicts with Training.max_steps: 6"),
    ({"Trainer": {"callbacks": [{"init_args": {}}]}}, "Trainer.callbacks[0]", "class_path: package.module.Class"),
    ({"Trainer": {"logger": {"class_path": "CSVLogger", "init": {}}}}, "Trainer.logger", "expected class_path and init_args"),
    ({"Trainr": {}}, "Trainr", "did you mean 'Trainer'"),
]


@pytest.mark.parametrize("raw,key,allowed", BAD, ids=[b[1] for b in BAD])
def test_bad_config_names_key_and_allowed(raw, key, allowed):
    with pytest.raises(ConfigError) as e:
        load_config(raw)
    msg = str(e.value)
    assert any(p.startswith(key + ":") for p in e.value.problems), msg
    assert allowed in msg, msg


def test_all_problems_reported_together():
    with pytest.raises(ConfigError) as e:
        load_config({"Data": {"scale": 5}, "Generator": {"block_type": "rdb"}, "Logging": {"logger": "x"}})
    assert len(e.value.problems) == 3
    assert isinstance(e.value, ValueError)


def test_defaults_are_valid_and_documented():
    cfg = load_config()
    table = describe_config()
    assert len(table) == len(set(table.key)) > 100
    assert table.meaning.str.len().min() > 5  # every key has a one-line meaning
    # every documented key is reachable on the config object
    for key in table.key:
        node = cfg
        for part in key.split("."): node = node[part]


@pytest.mark.parametrize("text,key,value", [
    ("Training.max_steps=200", "Training.max_steps", 200),
    ("Training.Losses.adv_loss_beta=1e-4", "Training.Losses.adv_loss_beta", 1e-4),
    ("Training.EMA.enabled=false", "Training.EMA.enabled", False),
    ("Model.continue_training=null", "Model.continue_training", None),
    ("Logging.display_bands=[2, 1, 0]", "Logging.display_bands", [2, 1, 0]),
    ("Logging.output_dir=runs/x y", "Logging.output_dir", "runs/x y"),
])
def test_overrides_parse_as_yaml_scalars(text, key, value):
    assert parse_override(text) == (key, value)
    cfg = load_config({}, [text])
    node = cfg
    for part in key.split("."): node = node[part]
    assert node == value


def test_override_errors():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"): load_config({}, ["Training.max_steps"])
    with pytest.raises(ConfigError, match="Training.max_stepz: unknown key"): load_config({}, ["Training.max_stepz=3"])
    with pytest.raises(ConfigError, match="Training.max_steps: "): load_config({}, ["Training.max_steps.x=3"])
    # later overrides win over earlier ones and over the file
    assert load_config({"Training": {"max_steps": 1}}, ["Training.max_steps=2", "Training.max_steps=3"]).Training.max_steps == 3


def test_snapshot_round_trip(tmp_path):
    cfg = load_config({"Data": {"scale": 2, "normalization": {"lr": {"name": "zscore", "mean": [1, 2, 3], "std": [1, 1, 1]}}},
                       "Training": {"Losses": {"perceptual_layers": {"relu2_2": 1.0}}}, "Trainer": {"log_every_n_steps": 7}})
    path = save_config(cfg, tmp_path / "config.yaml")
    again = load_config(path)
    assert again == cfg
    assert again.to_dict() == yaml.safe_load(path.read_text())
    assert again.Generator.scaling_factor == 2  # derived values are written out
    assert again.Trainer == {"log_every_n_steps": 7}


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"): load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"; bad.write_text("Data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"): load_config(bad)
    lst = tmp_path / "list.yaml"; lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping of sections"): load_config(lst)
    # safe_load: no Python objects from YAML tags
    evil = tmp_path / "evil.yaml"; evil.write_text("Data: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"): load_config(evil)


def test_crop_must_fit_smallest_image(tmp_path):
    for name, hw in [("a.png", (200, 200)), ("b.png", (90, 300))]:
        Image.fromarray(np.zeros((*hw, 3), np.uint8)).save(tmp_path / name)
    np.save(tmp_path / "c.npy", np.zeros((4, 150, 150), np.uint16))
    cfg = load_config({"Data": {"train_dir": str(tmp_path), "scale": 4, "lr_patch_size": 32}})  # reads no image
    with pytest.raises(ConfigError, match="'b.png' of size 90x300; use lr_patch_size <= 22"): check_paths(cfg)
    check_paths(cfg.override("Data.lr_patch_size=22"))


def test_vgg_weights_come_from_the_config_or_the_torch_hub_cache_else_both_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = load_config({"Training": {"Losses": {"perceptual_weight": 0.1}}})   # no file named: not a config error
    with pytest.raises(ConfigError, match=r"Training.Losses.perceptual_weights: .*is null and torchvision's cached file "
                                          r"`.*hub/checkpoints/vgg19-dcbb9e9d.pth` does not exist"):
        check_paths(cfg.override(f"Data.train_dir={tmp_path}"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth").write_bytes(b"")
    check_paths(cfg.override(f"Data.train_dir={tmp_path}"))                    # found in the cache


def test_loading_reads_no_file_but_the_yaml_and_paths_are_checked_before_a_run(tmp_path):
    cfg = load_config({"Data": {"train_dir": "/no/such/folder"}, "Model": {"continue_training": "missing.ckpt"},
                       "Training": {"Losses": {"perceptual_weight": 0.1, "perceptual_weights": "vgg.pt"}}})
    with pytest.raises(ConfigError) as e: check_paths(cfg)
    assert [p.split(":")[0] for p in e.value.problems] == ["Data.train_dir", "Model.continue_training",
                                                          "Training.Losses.perceptual_weights"]
    assert "does not exist" in str(e.value)
    from gan_engine.trainer import prepare
    with pytest.raises(ConfigError, match="Data.train_dir: folder '/no/such/folder' does not exist"):
        prepare(cfg.override(f"Logging.output_dir={tmp_path}/run"))
    assert not (tmp_path / "run").exists()                     # nothing written before the check


def test_config_is_read_only_and_picklable():
    import pickle
    cfg = load_config()
    with pytest.raises(AttributeError, match="read-only"): cfg.Data.scale = 2
    with pytest.raises(AttributeError, match="did you mean 'scale'"): cfg.Data.scael
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_registry_import_path_and_user_registration():
    reg = Registry("thing", "X.kind")
    reg.register("mine", dict)
    assert reg.get("MINE") is dict and "mine" in reg
    assert reg.get("collections:OrderedDict").__name__ == "OrderedDict"
    with pytest.raises(ConfigError, match="cannot import module"): reg.get("no_such_pkg_xyz:thing")


OPENSR = """
Data:
  train_batch_size: 12
  val_batch_size: 8
  num_workers: 4
  prefetch_factor: 2
  dataset_type: S2_6b
  normalization: sentinel2
Model: {in_bands: 6, continue_training: false, load_checkpoint: false}
Training:
  device: cuda
  gpus: [0, 1]
  max_epochs: 9999
  val_check_interval: 1.0
  limit_val_batches: 250
  pretrain_g_only: true
  g_pretrain_steps: 10000
  adv_loss_ramp_steps: 5000
  label_smoothing: true
  seed: 7
  find_unused_parameters: true
  EMA: {enabled: true, decay: 0.995, update_after_step: 100, use_num_updates: true, device: cpu}
  Losses:
    adv_loss_beta: 0.001
    adv_loss_schedule: cosine
    l1_weight: 1.0
    sam_weight: 0.05
    perceptual_weight: 0.0
    perceptual_metric: vgg
    tv_weight: 0.0
    max_val: 1.0
    ssim_win: 11
    adv_loss_type: wasserstein
    relativistic_average_d: false
    r1_gamma: 0.0
Generator: {model_type: esrgan, block_type: rrdb, large_kernel_size: 9, small_kernel_size: 3, n_channels: 64,
            n_blocks: 23, scaling_factor: 4, growth_channels: 32, res_scale: 0.2, use_icnr: true}
Discriminator: {model_type: esrgan, n_blocks: 8, base_channels: 64, linear_size: 1024, use_spectral_norm: true}
Optimizers: {optim_g_lr: 0.0001, optim_d_lr: 0.0001, gradient_clip_val: 0.5, betas: [0.0, 0.99], eps: 1.0e-7,
             weight_decay_g: 0.0, weight_decay_d: 0.0}
Schedulers: {g_warmup_steps: 2500, g_warmup_type: cosine, metric_g: val/l1, metric_d: val/l1, patience_g: 50,
             patience_d: 50, factor_g: 0.5, factor_d: 0.5, verbose: true}
Logging: {num_val_images: 5, wandb: {enabled: true, entity: opensr, project: srgan}, output_dir: logs/}
"""


def test_opensr_config_loads_unchanged(tmp_path):
    path = tmp_path / "opensr.yaml"; path.write_text(OPENSR)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(path)
    named = sorted(str(w.message).split("=")[0] for w in caught if issubclass(w.category, ConfigWarning))
    # every key it cannot honour exactly is reported by name
    assert named == ["Data.dataset_type", "Schedulers.verbose"], named
    assert cfg.Trainer == {"accelerator": "gpu", "devices": [0, 1], "max_epochs": 9999,
                           "val_check_interval": 1.0, "limit_val_batches": 250}
    assert cfg.Training.max_steps == -1
    assert cfg.Data.normalization.lr == cfg.Data.normalization.hr == "sentinel2"
    assert (cfg.Generator.model_type, cfg.Generator.block_type, cfg.Generator.n_blocks) == ("opensr_esrgan", "rrdb", 23)
    assert (cfg.Discriminator.model_type, cfg.Discriminator.use_spectral_norm) == ("opensr_esrgan", True)   # its own networks
    assert cfg.Logging.logger == "wandb" and cfg.Logging.wandb.project == "srgan"
    assert (cfg.Training.EMA.decay, cfg.Training.EMA.device, cfg.Training.seed) == (0.995, "cpu", 7)
    assert cfg.Optimizers.gradient_clip_val == 0.5 and cfg.Schedulers.g_warmup_type == "cosine"
    assert cfg.Training.Losses.adv_loss_type == "wasserstein"


def test_opensr_stochastic_generator_builds_its_own_network():
    from gan_engine.generators import build_generator
    cfg = load_config({"Generator": {"model_type": "stochastic", "n_channels": 8, "n_blocks": 1, "noise_dim": 16}, "Data": {"scale": 2}})
    assert cfg.Generator.model_type == "opensr_stochastic"
    g = build_generator(cfg)
    x = torch.rand(1, 3, 6, 6)
    assert g(x).shape == (1, 3, 12, 12) and not torch.equal(g(x), g(x))   # a fresh latent per call, as there


def test_schema_has_architecture_contract_keys():
    required = {"Data": ["train_dir", "val_dir", "scale", "lr_patch_size", "train_batch_size", "val_batch_size",
                         "num_workers", "normalization"],
                "Model": ["task", "in_bands", "continue_training"],
                "Generator": ["model_type", "block_type", "n_channels", "n_blocks", "scaling_factor"],
                "Discriminator": ["model_type", "n_blocks", "base_channels", "use_spectral_norm"],
                "Training": ["max_steps", "seed", "precision", "pretrain_g_only", "g_pretrain_steps",
                             "adv_loss_ramp_steps", "label_smoothing", "d_update_interval", "find_unused_parameters",
                             "EMA", "Losses"],
                "Callbacks": ["checkpoint", "lr_monitor", "early_stopping", "extra_validation"],
                "Logging": ["logger", "output_dir", "images_every_n_steps", "num_val_images",
                            "histograms_every_n_steps", "wandb"]}
    for section, keys in required.items():
        assert set(keys) <= set(SCHEMA[section]), (section, set(keys) - set(SCHEMA[section]))
    assert {"enabled", "decay", "update_after_step", "use_num_updates", "every_n_steps", "device"} <= set(SCHEMA["Training"]["EMA"])
