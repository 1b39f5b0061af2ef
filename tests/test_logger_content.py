"""Issue 16: the loggers hold what the run logged, read back from their own files (not "a file exists").

For an SR, an inpainting and a prompt run, each trained through `fit(cfg)` with `Logging.logger` set in the config:

- TensorBoard: the event files read with TensorBoard's `EventAccumulator` (scalars by tag and step, the images decoded,
  the caption and config texts) and its raw event loader (the hyperparameters plugin's record).
- W&B (offline): the run's `.wandb` transaction log read record by record with wandb's own protobuf messages
  (`wandb.proto.wandb_internal_pb2.Record`; wandb >= 0.2x has no Python reader of its own any more: `wandb-core` writes
  the log in LevelDB's log format, read below), and the media files the history points to.

Steps are generator steps in Lightning's logger convention: the values of generator step k (0-based; after k+1 updates
of the generator) are logged at step k, so a validation after 3 generator steps is at step 2.
"""
import io, json, struct, time, zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gan_engine.config import yaml_load
from gan_engine.module import PANEL_MIN_TILE, panel_psnr_notes
from gan_engine.render import render_panels
from gan_engine.testing import tiny_config
from gan_engine.trainer import fit

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data_samples"
TASKS = ("sr", "inpaint", "prompt")
MAX_STEPS, VAL_EVERY, LOG_EVERY, PRETRAIN, HIST_EVERY, NORM_EVERY, N_IMAGES = 6, 3, 2, 2, 3, 3, 2
# logger steps (0-based generator steps) where each kind of value is due
TRAIN_STEPS = [s for s in range(MAX_STEPS) if (s + 1) % LOG_EVERY == 0 or s == MAX_STEPS - 1]   # 1, 3, 5
D_STEPS = [s for s in TRAIN_STEPS if s >= PRETRAIN]                                          # 3, 5: adversarial
VAL_STEPS = [s - 1 for s in range(VAL_EVERY, MAX_STEPS + 1, VAL_EVERY)]                      # 2, 5
HIST_STEPS = [s - 1 for s in range(HIST_EVERY, MAX_STEPS + 1, HIST_EVERY)]                    # 2, 5
NORM_STEPS = [s - 1 for s in range(NORM_EVERY, MAX_STEPS + 1, NORM_EVERY)]                    # 2, 5
VAL_METRIC = {"sr": "val/psnr", "inpaint": "val/psnr_hole", "prompt": "val/adherence_all"}
pytestmark = [pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
              pytest.mark.filterwarnings("ignore:.*smaller than the logging interval.*"),
              pytest.mark.filterwarnings("ignore:.*exists and is not empty.*"),
              pytest.mark.filterwarnings("ignore:.*anonymous setting.*"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def run_config(task, out, logger, *extra):
    "The tiny config of `task`: 6 generator steps (2 of pretraining), validation and panels every 3, train values every 2."
    return tiny_config(SAMPLES, [f"Logging.output_dir={out}", f"Logging.logger={logger}", f"Training.max_steps={MAX_STEPS}",
                                 f"Training.g_pretrain_steps={PRETRAIN}", "Training.adv_loss_ramp_steps=2",
                                 f"Training.val_every_n_steps={VAL_EVERY}", "Logging.images_every_n_steps=1",
                                 f"Logging.histograms_every_n_steps={HIST_EVERY}",
                                 f"Logging.grad_norm_every_n_steps={NORM_EVERY}", f"Logging.num_val_images={N_IMAGES}",
                                 f"Trainer.log_every_n_steps={LOG_EVERY}", "Trainer.limit_val_batches=1", *extra], task=task)


def expected_grid(module, cfg)->np.ndarray:
    "The last validation's panel grid, rendered again from what the module kept (what the loggers must hold)."
    prompts = getattr(module, "val_prompts", None) or None
    return render_panels(module.val_panels, module.value_range, cfg.Logging.display_bands, labels=True, row_labels=prompts,
                         notes=panel_psnr_notes(module.val_panels, module.value_range), min_tile=PANEL_MIN_TILE)


def expected_caption(module)->str:
    prompts = getattr(module, "val_prompts", None) or []
    return " | ".join(module.val_panels) + ("\n" + "\n".join(prompts) if prompts else "")


def unfence(text:str)->str:
    "The text of a fenced Markdown block (how `log_images`/`log_config` give TensorBoard verbatim text)."
    lines = text.split("\n")
    fence = lines[0][:len(lines[0]) - len(lines[0].lstrip("`"))]
    assert len(fence) >= 3 and lines[-1] == fence, text[:200]
    return "\n".join(lines[1:-1])


def check_grid_geometry(png:np.ndarray, module, task):
    "Rows = Logging.num_val_images, columns = the task's panels, tiles enlarged for the labels; the mask panel is the mask."
    panels = module.val_panels
    n, (H, W) = len(next(iter(panels.values()))), next(iter(panels.values())).shape[-2:]
    f, pad, head = max(1, -(-PANEL_MIN_TILE // W)), 2, 14
    assert n == N_IMAGES
    assert png.shape[1] == len(panels) * (W * f + pad) - pad
    rows_h = n * (H * f + pad) - pad
    if task == "prompt": assert png.shape[0] > head + rows_h     # a strip of text (the prompt) under each row
    else: assert png.shape[0] == head + rows_h
    if task == "inpaint":
        j = list(panels).index("mask")
        for i in range(n):
            tile = png[head + i * (H * f + pad):head + i * (H * f + pad) + H * f, j * (W * f + pad):j * (W * f + pad) + W * f]
            assert set(np.unique(tile)) <= {0, 255} and (tile[..., 0] == tile[..., 2]).all()   # black and white
            hole = panels["mask"][i, 0].numpy()
            assert 0 < hole.mean() < 1 and (tile[..., 0] == 255).mean() == pytest.approx(hole.mean())


def flatten(d:dict, prefix="")->dict:
    "Nested config sections to 'a/b/c' keys as Lightning flattens hyperparameters: lists of sections by index, so an empty list vanishes."
    out = {}
    for k, v in d.items():
        if isinstance(v, dict): out.update(flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, list) and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v): out.update(flatten(x, f"{prefix}{k}/{i}/"))
        else: out[f"{prefix}{k}"] = v
    return out


# ---------------------------------------------------------------------------------------------------- TensorBoard

class TBRun:
    "A finished TensorBoard run read back: scalars, images, texts and hyperparameters."
    def __init__(self, run):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        self.run, self.module, self.task = run, run.module, run.module.cfg.Model.task
        self.cfg_yaml = (run.run_dir / "config.yaml").read_text()
        logdir = run.run_dir / "tensorboard"
        self.acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0, "histograms": 0})
        self.acc.Reload()
        self.tags = self.acc.Tags()
        self.events = sorted(logdir.glob("events.out.tfevents*"))

    def scalars(self, tag)->dict: return {e.step: e.value for e in self.acc.Scalars(tag)}
    def images(self, tag)->list: return [(e.step, e.width, e.height, np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB")))
                                         for e in self.acc.Images(tag)]
    def texts(self, tag)->list:
        from tensorboard.util.tensor_util import make_ndarray
        return [(e.step, make_ndarray(e.tensor_proto).item().decode()) for e in self.acc.Tensors(f"{tag}/text_summary")]

    def hparams(self)->dict:
        "The hyperparameters plugin's session record (what TensorBoard's HPARAMS tab shows)."
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
        from tensorboard.plugins.hparams import plugin_data_pb2
        out = {}
        for path in self.events:
            for ev in EventFileLoader(str(path)).Load():
                for v in ev.summary.value:
                    if v.metadata.plugin_data.plugin_name != "hparams": continue
                    data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                    if data.HasField("session_start_info"):
                        for k, val in data.session_start_info.hparams.items():
                            out[k] = getattr(val, val.WhichOneof("kind"))
        return out


# ---------------------------------------------------------------------------------------------------- W&B offline

def wandb_records(path:Path):
    "Every `Record` in a `.wandb` transaction log (LevelDB log format: 32 KiB blocks of CRC-checked chunks)."
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), "not a W&B transaction log"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7: pos += left; continue                       # a block's zero-filled tail
        crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and n == 0: pos += left; continue
        if pos + 7 + n > len(data): return                      # a record still being written
        chunk = data[pos + 7:pos + 7 + n]
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc, f"corrupt chunk at byte {pos}"
        pos += 7 + n
        if kind in (2, 3): buf = (buf if kind == 3 else b"") + chunk; continue   # first / middle of a record
        rec = pb.Record(); rec.ParseFromString(buf + chunk if kind == 4 else chunk); buf = b""
        yield rec


def _items(items)->dict:
    "Config, history or summary items as a nested dict of JSON values."
    out = {}
    for it in items:
        path = [it.key] if it.key else list(it.nested_key)
        d = out
        for k in path[:-1]: d = d.setdefault(k, {})
        d[path[-1]] = json.loads(it.value_json)
    return out


class WandbRun:
    "A finished offline W&B run read back from its transaction log."
    def __init__(self, run):
        self.run, self.module, self.task = run, run.module, run.module.cfg.Model.task
        self.cfg_yaml = (run.run_dir / "config.yaml").read_text()
        (self.dir,) = (run.run_dir / "wandb").glob("offline-run-*")
        (log,) = self.dir.glob("run-*.wandb")
        # `wandb.finish()` can return before wandb-core has written the last records: the log is whole once its
        # exit record is in it
        for _ in range(300):
            records = list(wandb_records(log))
            if any(r.WhichOneof("record_type") == "exit" for r in records): break
            time.sleep(0.1)
        else: raise AssertionError(f"{log} has no exit record 30 s after wandb.finish()")
        self.history, self.config_updates, self.summary, self.files, self.run_config = [], {}, {}, [], None
        for r in records:
            kind = r.WhichOneof("record_type")
            if kind == "history": self.history.append(_items(r.history.item))
            elif kind == "config": self.config_updates.update(_items(r.config.update))
            elif kind == "summary": self.summary.update(_items(r.summary.update))
            elif kind == "files": self.files += [f.path for f in r.files.files]
            elif kind == "run": self.run_config = _items(r.run.config.update)

    def rows(self, key)->list: return [h for h in self.history if key in h]
    def steps(self, key)->list: return [h["trainer/global_step"] for h in self.rows(key)]
    def values(self, key)->dict: return {h["trainer/global_step"]: h[key] for h in self.rows(key)}


# ---------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module", params=TASKS)
def task(request): return request.param


@pytest.fixture(scope="module")
def tb(task, tmp_path_factory):
    pytest.importorskip("tensorboard")
    run = fit(run_config(task, tmp_path_factory.mktemp(f"tb-{task}") / "run", "tensorboard"))
    return TBRun(run)


@pytest.fixture(scope="module")
def wb(task, tmp_path_factory):
    pytest.importorskip("wandb")
    import wandb
    home = tmp_path_factory.mktemp(f"wandb-home-{task}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_SILENT", "true")
        for k in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"): mp.setenv(k, str(home / k))
        mp.delenv("WANDB_ERROR_REPORTING", raising=False)     # fit sets it for offline runs; put back afterwards
        try: run = fit(run_config(task, tmp_path_factory.mktemp(f"wb-{task}") / "run", "wandb", "Logging.wandb.mode=offline"))
        finally: wandb.finish()                                 # flushes and closes the transaction log
    return WandbRun(run)


# ---------------------------------------------------------------------------------------------------- TensorBoard tests

def test_tensorboard_scalars_at_generator_steps(tb):
    m = tb.module
    assert (m.g_step, tb.run.trainer.global_step) == (MAX_STEPS, MAX_STEPS)   # Lightning's step counts generator steps
    g = tb.scalars("train/g_step")
    assert sorted(g) == TRAIN_STEPS and all(v == s + 1 for s, v in g.items())   # logged at step k: generator step k
    assert sorted(tb.scalars("train/loss_g")) == TRAIN_STEPS
    assert sorted(tb.scalars("train/loss_d")) == D_STEPS                       # only once the discriminator trains
    assert {s: v for s, v in tb.scalars("train/phase").items()} == {s: float(s >= PRETRAIN) for s in TRAIN_STEPS}
    assert sorted(tb.scalars(VAL_METRIC[tb.task])) == VAL_STEPS
    assert sorted(tb.scalars("val/l1")) == VAL_STEPS
    assert sorted(tb.scalars("train/grad_norm_g")) == NORM_STEPS
    if tb.task == "sr":
        bicubic = tb.run.trainer.callback_metrics["val/psnr_bicubic"].item()   # the same baseline at every validation
        assert list(tb.scalars("val/psnr_bicubic").values()) == pytest.approx([bicubic] * len(VAL_STEPS))
    last = tb.scalars(VAL_METRIC[tb.task])[VAL_STEPS[-1]]
    assert last == pytest.approx(tb.run.trainer.callback_metrics[VAL_METRIC[tb.task]].item(), abs=1e-5)


def test_tensorboard_panels_are_the_rendered_grid(tb):
    imgs = tb.images("val/panels")
    assert len(imgs) == len(VAL_STEPS)                                  # one panel grid per validation
    assert [s for s, *_ in imgs] == sorted(s for s, *_ in imgs)
    for step, w, h, png in imgs: assert png.shape == (h, w, 3)
    grid = expected_grid(tb.module, tb.module.cfg)
    np.testing.assert_array_equal(imgs[-1][3], grid)                    # pixel for pixel what the module rendered
    check_grid_geometry(imgs[-1][3], tb.module, tb.task)


def test_tensorboard_captions_as_text(tb):
    "The panel caption (column names; the prompts in a prompt run) as text at the image's step."
    imgs, texts = tb.images("val/panels"), tb.texts("val/panels/caption")
    assert [s for s, *_ in imgs] == [s for s, _ in texts]
    caption = unfence(texts[-1][1])
    assert caption == expected_caption(tb.module)
    names = caption.split("\n")[0].split(" | ")
    assert names == list(tb.module.val_panels)
    if tb.task == "inpaint": assert {"masked input", "mask", "composite", "target"} <= set(names)
    if tb.task == "prompt":
        prompts = caption.split("\n")[1:]
        assert prompts == tb.module.val_prompts and len(prompts) == N_IMAGES and all(p.strip() for p in prompts)
        emb, emb_text = tb.images("val/embeddings"), tb.texts("val/embeddings/caption")
        assert len(emb) == len(VAL_STEPS) and [s for s, *_ in emb] == [s for s, *_ in imgs]
        assert unfence(emb_text[-1][1]) == "PCA of the prompt embeddings"
        assert emb[-1][3].std() > 0                                      # a drawn plot, not a blank image
    else:
        assert "val/embeddings" not in tb.tags["images"]


def test_tensorboard_hyperparameters_are_the_config(tb):
    hp = tb.hparams()
    cfg = yaml_load(tb.cfg_yaml)
    want = {f"config/{k}": v for k, v in flatten(cfg).items()}
    want["value_range"] = list(tb.module.value_range)
    assert set(hp) == set(want)
    for k, v in want.items():   # Lightning writes numbers (bools as 0/1) as numbers, anything else as its str()
        assert hp[k] == (pytest.approx(float(v)) if isinstance(v, (bool, int, float)) else str(v)), k
    assert hp["config/Model/task"] == tb.task and hp["config/Logging/logger"] == "tensorboard"


def test_tensorboard_histograms(tb):
    names = {f"{kind}/{net}/{p}" for kind in ("weights", "grads") for net, mod in
             [("generator", tb.module.generator), ("discriminator", tb.module.discriminator)] for p, _ in mod.named_parameters()}
    assert set(tb.tags["histograms"]) == names                          # every parameter and its gradient
    name, p = next(iter(tb.module.generator.named_parameters()))
    events = tb.acc.Histograms(f"weights/generator/{name}")
    assert len(events) == len(HIST_STEPS)
    last, p = events[-1].histogram_value, p.detach()                   # the last ones: the trained weights
    assert last.num == p.numel() and last.min == pytest.approx(p.min().item()) and last.max == pytest.approx(p.max().item())


def test_tensorboard_config_text(tb):
    texts = tb.texts("config")
    assert [s for s, _ in texts] == [0]
    text = unfence(texts[0][1])
    assert text == tb.cfg_yaml.rstrip("\n")                             # the run's config.yaml, as text
    assert yaml_load(text) == tb.module.cfg.to_dict()


def test_tensorboard_panels_and_histograms_at_the_validation_step(tb):
    assert [s for s, *_ in tb.images("val/panels")] == VAL_STEPS       # beside the val/ metrics they show
    assert [s for s, _ in tb.texts("val/panels/caption")] == VAL_STEPS
    tag = "weights/generator/" + next(iter(dict(tb.module.generator.named_parameters())))
    assert [e.step for e in tb.acc.Histograms(tag)] == HIST_STEPS


# ---------------------------------------------------------------------------------------------------- W&B tests

def test_wandb_history_at_generator_steps(wb):
    assert wb.module.g_step == MAX_STEPS
    for row in wb.rows("train/loss_g"): assert row["train/g_step"] == row["trainer/global_step"] + 1
    assert wb.steps("train/loss_g") == TRAIN_STEPS
    assert wb.steps("train/loss_d") == D_STEPS
    assert wb.values("train/phase") == {s: float(s >= PRETRAIN) for s in TRAIN_STEPS}
    assert wb.steps(VAL_METRIC[wb.task]) == VAL_STEPS
    assert wb.steps("train/grad_norm_g") == NORM_STEPS
    key = VAL_METRIC[wb.task]
    last = wb.values(key)[VAL_STEPS[-1]]
    assert last == pytest.approx(wb.run.trainer.callback_metrics[key].item(), abs=1e-5)
    assert wb.summary[key] == pytest.approx(last)                       # the run summary: the last value
    assert [h["_step"] for h in wb.history] == list(range(len(wb.history)))


def test_wandb_panels_are_media_referenced_by_the_history(wb):
    rows = wb.rows("val/panels")
    assert len(rows) == len(VAL_STEPS)
    caption = expected_caption(wb.module)
    for row in rows:
        media = row["val/panels"]
        assert media["_type"] == "images/separated" and media["count"] == 1 and media["format"] == "png"
        (name,) = media["filenames"]
        assert name in wb.files and name.startswith("media/images/val/panels_")
        png = np.asarray(Image.open(wb.dir / "files" / name).convert("RGB"))
        assert png.shape == (media["height"], media["width"], 3)
        assert len(media["captions"]) == 1
    assert rows[-1]["val/panels"]["captions"] == [caption]
    last = np.asarray(Image.open(wb.dir / "files" / rows[-1]["val/panels"]["filenames"][0]).convert("RGB"))
    np.testing.assert_array_equal(last, expected_grid(wb.module, wb.module.cfg))
    check_grid_geometry(last, wb.module, wb.task)
    if wb.task == "inpaint": assert "mask" in caption.split("\n")[0].split(" | ")
    if wb.task == "prompt":
        assert caption.split("\n")[1:] == wb.module.val_prompts and len(wb.module.val_prompts) == N_IMAGES
        emb = wb.rows("val/embeddings")
        assert len(emb) == len(VAL_STEPS) and emb[-1]["val/embeddings"]["captions"] == ["PCA of the prompt embeddings"]
        assert (wb.dir / "files" / emb[-1]["val/embeddings"]["filenames"][0]).is_file()
    else:
        assert not wb.rows("val/embeddings")


def test_wandb_config_is_the_run_config(wb):
    cfg = yaml_load(wb.cfg_yaml)
    assert {k: v for k, v in wb.run_config.items() if k != "_wandb"} == cfg   # the run's config, section by section
    assert wb.config_updates["config"] == cfg                           # and the module's hyperparameters
    assert wb.config_updates["value_range"] == list(wb.module.value_range)
    assert cfg["Logging"]["logger"] == "wandb" and cfg["Model"]["task"] == wb.task


def test_wandb_histograms(wb):
    rows = [h for h in wb.history if any(k.startswith("weights/") for k in h)]
    assert len(rows) == len(HIST_STEPS)
    name, p = next(iter(wb.module.generator.named_parameters()))
    h = rows[-1][f"weights/generator/{name}"]
    assert h["_type"] == "histogram" and sum(h["values"]) == p.numel() and len(h["bins"]) == len(h["values"]) + 1


def test_wandb_panels_and_histograms_at_the_validation_step(wb):
    assert wb.steps("val/panels") == VAL_STEPS
    assert [h["trainer/global_step"] for h in wb.history if any(k.startswith("weights/") for k in h)] == HIST_STEPS


def test_both_loggers_hold_the_same_run(tb, wb):
    "Same seed and config but the logger: the same numbers and the same last panel grid in both."
    for key in ("train/loss_g", VAL_METRIC[tb.task]):
        t, w = tb.scalars(key), wb.values(key)
        assert sorted(t) == sorted(w) and all(t[s] == pytest.approx(w[s], rel=1e-5, abs=1e-6) for s in t), key
    t_png = tb.images("val/panels")[-1][3]
    w_png = np.asarray(Image.open(wb.dir / "files" / wb.rows("val/panels")[-1]["val/panels"]["filenames"][0]).convert("RGB"))
    np.testing.assert_array_equal(t_png, w_png)
