"Headless tests of gan_engine.widgets: capture history, inspector state and bytes, live dashboard."
import threading, time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import lightning as L

from gan_engine.data import GANDataModule
from gan_engine.module import GANModule
from gan_engine.testing import fit_tiny, tiny_config
from gan_engine.capture import SampleCapture, find_capture, sample_metrics
from gan_engine.render import loss_plot_png, png_size
from gan_engine.widgets import Inspector, LiveTraining

pytestmark = [pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
              pytest.mark.filterwarnings("ignore:.*LeafSpec.*")]
SAMPLES = Path(__file__).resolve().parents[1] / "data_samples"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    "Tiny tensors: one intra-op thread is several times faster on a busy 2-core machine."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained(one_thread):
    "A tiny run (10 generator steps, EMA on) with a capture every 3 steps."
    cfg = tiny_config(SAMPLES, ["Training.max_steps=10", "Data.repeat=4"])
    cap = SampleCapture(every_n_steps=3, num_samples=3, max_entries=40)
    module, _ = fit_tiny(cfg.override("Logging.logger=none", "Trainer.enable_checkpointing=false"), [cap], limit_val_batches=0)
    vb = next(iter(GANDataModule(cfg).val_dataloader()))
    return module, cap, vb


def fake_trainer(step, zero=True, datamodule=None):
    return SimpleNamespace(is_global_zero=zero, global_step=step, optimizers=[], datamodule=datamodule)


# ---- capture ----
def test_capture_schedule_and_contents(trained):
    module, cap, vb = trained
    assert cap.steps == [0, 3, 6, 9, 10]                       # start, every 3rd step, end
    e = cap.latest
    assert e.sr.shape == e.sr_raw.shape == e.hr.shape == (3, 3, 16, 16)
    assert torch.equal(e.hr, vb["hr"][:3]) and torch.equal(e.lr, vb["lr"][:3])
    assert (e.sr - e.sr_raw).abs().max() > 0                  # EMA vs raw really differ
    for k in ("psnr", "ssim", "psnr_raw", "ssim_raw", "psnr_baseline", "ssim_baseline"): assert e.metrics[k].shape == (3,)
    ref = sample_metrics(e.sr_raw, e.hr, (0, 255))
    assert torch.allclose(e.metrics["psnr_raw"], ref["psnr"]) and torch.allclose(e.metrics["ssim_raw"], ref["ssim"])
    assert 0 <= e.sr.min() and e.sr.max() <= 255               # clamped to the value range


def test_capture_matches_module_prediction(trained):
    module, cap, vb = trained
    module.eval()
    with torch.no_grad():
        ema, raw = module(vb["lr"][:3]).clamp(0, 255), module(vb["lr"][:3], raw=True).clamp(0, 255)
    module.train()
    e = SampleCapture(num_samples=3, batch=vb).record(module)
    assert torch.allclose(e.sr, ema, atol=1e-3) and torch.allclose(e.sr_raw, raw, atol=1e-3)
    assert module.generator.training                           # train mode restored


def test_bounded_history_keeps_first_and_latest(trained):
    module, _, vb = trained
    cap = SampleCapture(every_n_steps=1, max_entries=6, batch=vb)
    per_entry = None
    for s in range(100):
        cap.record(module, step=s)
        assert len(cap) <= 6
        per_entry = per_entry or cap.entries[0].nbytes
        assert sum(e.nbytes for e in cap.entries) <= 6 * per_entry
    steps = cap.steps
    assert steps[0] == 0 and steps[-1] == 99 and steps == sorted(steps)
    assert cap.thinned > 0


def test_hooks_respect_interval_and_rank(trained):
    module, _, vb = trained
    cap = SampleCapture(every_n_steps=5, batch=vb)
    for s in range(1, 12):
        cap.on_train_batch_end(fake_trainer(s), module, None, vb, 0)
    assert cap.steps == [5, 10]
    other = SampleCapture(every_n_steps=1, batch=vb)
    other.on_train_start(fake_trainer(0, zero=False), module)
    for s in range(1, 4): other.on_train_batch_end(fake_trainer(s, zero=False), module, None, vb, 0)
    other.on_train_end(fake_trainer(3, zero=False), module)
    assert len(other) == 0                                     # rank != 0 never captures


def test_fixed_batch_falls_back_to_first_training_batch(trained):
    module, _, vb = trained
    cap = SampleCapture(every_n_steps=1, num_samples=2)
    cap.on_train_start(fake_trainer(0), module)                # no datamodule: nothing to capture yet
    assert len(cap) == 0 and cap.inputs is None
    cap.on_train_batch_end(fake_trainer(1), module, None, vb, 0)
    assert torch.equal(cap.inputs["hr"], vb["hr"][:2]) and cap.steps == [1]
    later = {k: (v + 1 if isinstance(v, torch.Tensor) else v) for k, v in vb.items()}
    cap.on_train_batch_end(fake_trainer(2), module, None, later, 0)
    assert torch.equal(cap.latest.hr, vb["hr"][:2])            # still the first batch: fixed samples


def test_on_capture_hook_errors_do_not_stop_training(trained):
    module, _, vb = trained
    def bad(e): raise RuntimeError("hook broke")
    cap = SampleCapture(batch=vb, on_capture=[bad])
    with pytest.warns(RuntimeWarning, match="hook broke"): cap.record(module)
    assert len(cap) == 1 and "hook broke" in str(cap.hook_error)


def test_concurrent_record_and_refresh(trained):
    module, _, vb = trained
    cap = SampleCapture(max_entries=5, batch=vb)
    ins = Inspector(cap)
    errors = []
    def writer():
        try:
            for s in range(30): cap.record(module, step=s)
        except Exception as e: errors.append(e)
    t = threading.Thread(target=writer); t.start()
    while t.is_alive():
        try: ins.refresh(); ins.step.value = 0
        except Exception as e: errors.append(e); break
    t.join(); ins.refresh()
    assert not errors
    assert ins.state["step"] == 0 or ins.state["n_steps"] == len(cap)
    ins.step.value = ins.step.max
    assert ins.state["step"] == 29


# ---- inspector ----
def test_inspector_controls_change_state_and_bytes(trained):
    module, cap, _ = trained
    ins = Inspector(cap)
    assert ins.state["step"] == cap.latest.step and ins.state["panels"] == ["lr", "sr", "hr", "error"]
    first = dict(ins.png)
    ins.step.value = 0
    assert ins.state["step"] == 0 and ins.png["sr"] != first["sr"] and ins.png["hr"] == first["hr"]
    assert ins.png["sr"] == ins.images["sr"].value             # what the widget holds is what was drawn
    ins.step.value = ins.step.max
    ins.sample.value = 2
    assert ins.state["sample"] == 2 and ins.png["hr"] != first["hr"] and ins.png["lr"] != first["lr"]
    ema = ins.png["sr"]
    ins.weights.value = "raw"
    assert ins.state["weights"] == "raw" and ins.png["sr"] != ema and ins.png["hr"] != ema
    ins.weights.value = "EMA"
    assert ins.png["sr"] == ema                                # back to the same bytes
    hr = ins.png["hr"]
    ins.rgb[1].value = 0
    assert ins.state["bands"] == (0, 0, 2) and ins.png["hr"] != hr
    ins.stretch.value = "percentile"; ins.percentiles.value = (10.0, 90.0)
    assert ins.state["stretch"] == "percentile" and ins.state["limits"] == (10.0, 90.0)
    ins.stretch.value = "range"; ins.limits.value = (0.0, 100.0)
    assert ins.state["limits"] == (0.0, 100.0)
    ins.zoom.value = 4
    assert (ins.x.max, ins.y.max) == (12, 12)
    ins.x.value, ins.y.value = 12, 3
    assert ins.state["region"] == (12, 3, 4)
    assert {png_size(ins.png[k]) for k in ("lr", "sr", "hr", "error")} == {(192, 192)}
    err = ins.png["error"]
    ins.error_max.value = 1.0
    assert ins.state["error_max"] == 1.0 and ins.png["error"] != err and ins.png["sr"] == ins.images["sr"].value


def test_inspector_pixels_are_the_data(trained):
    from PIL import Image
    import io
    _, cap, _ = trained
    ins = Inspector(cap, display_size=16)
    ins.sample.value = 1
    ins.zoom.value = 8; ins.x.value, ins.y.value = 4, 6
    shown = np.asarray(Image.open(io.BytesIO(ins.png["hr"]))) / 255        # 8 px enlarged 2x
    ref = cap.latest.hr[1, :, 6:14, 4:12].permute(1, 2, 0).numpy() / 255
    np.testing.assert_allclose(shown[::2, ::2], ref, atol=1 / 255 + 1e-6)


def test_refresh_follows_latest_or_keeps_step(trained):
    module, _, vb = trained
    cap = SampleCapture(batch=vb)
    ins = Inspector(cap)
    assert ins.state["panels"] == [] and "No samples" in ins.message.value
    for s in (0, 5): cap.record(module, step=s)
    assert ins.refresh() == 2 and ins.state["step"] == 5 and ins.message.value == ""
    cap.record(module, step=10); ins.refresh()
    assert ins.state["step"] == 10                             # followed the latest
    ins.step.value = 0; cap.record(module, step=15); ins.refresh()
    assert ins.state["step"] == 0 and ins.state["n_steps"] == 4  # stayed


def test_mask_and_prompt_panels_only_when_present(trained):
    module, cap, vb = trained
    plain = Inspector(cap)
    assert "mask" not in plain.visible_panels and plain.prompt.layout.display == "none" and plain.prompt.value == ""
    mask = torch.zeros(4, 1, 16, 16); mask[:, :, :8] = 1
    syn = {**vb, "mask": mask, "prompt": ["red", "green", "blue", "grey"]}
    c2 = SampleCapture(num_samples=2, batch=syn); c2.record(module)
    ins = Inspector(c2)
    assert ins.visible_panels == ["lr", "sr", "hr", "error", "mask"]
    assert ins.state["prompt"] and "red" in ins.prompt.value
    ins.sample.value = 1
    assert "green" in ins.prompt.value
    from PIL import Image
    import io
    m = np.asarray(Image.open(io.BytesIO(ins.png["mask"]))).astype(int)
    h = np.asarray(Image.open(io.BytesIO(ins.png["hr"]))).astype(int)
    top, bottom = slice(0, 96), slice(96, 192)
    assert (m[top, :, 0] >= h[top, :, 0]).all() and (m[top] != h[top]).any()   # masked half tinted red
    assert (m[bottom] == h[bottom]).all()                                          # the rest untouched
    only_prompt = SampleCapture(num_samples=2, batch={**vb, "prompt": ["a", "b", "c", "d"]}); only_prompt.record(module)
    ip = Inspector(only_prompt)
    assert "mask" not in ip.visible_panels and ip.state["prompt"]


# ---- dashboard ----
class FakeSession:
    def __init__(self, module, df):
        self.module, self._df, self.error, self.alive, self.stops = module, df, None, True, []
    running = property(lambda s: s.alive)
    metrics = property(lambda s: s._df)
    def stop(self, wait=True, timeout=None): self.stops.append(wait)


def test_dashboard_stop_status_and_plot(trained):
    module, cap, _ = trained
    df = pd.DataFrame({"train/loss_g": np.linspace(1, 0.1, 30)}, index=pd.RangeIndex(30, name="step"))
    s = FakeSession(module, df)
    live = LiveTraining(s, cap, auto_refresh=False)
    assert live.state == "running" and not live.stop_button.disabled
    plot = live.plot.value
    assert png_size(plot) == (720, 208)
    live.stop_button.click()
    assert s.stops == [False] and live.state == "stopping" and live.stop_button.disabled
    s._df = pd.concat([df, pd.DataFrame({"val/psnr": [20.0]}, index=[30])])
    s.alive = False; live.refresh()
    assert live.state == "stopped" and live.plot.value != plot
    s.error = ValueError("Data.train_dir: no images")
    live.refresh()
    assert live.state == "failed" and "ValueError: Data.train_dir: no images" in live.status.value


def test_dashboard_needs_a_capture(trained):
    module, _, _ = trained
    with pytest.raises(ValueError, match="Expected a SampleCapture"):
        LiveTraining(FakeSession(module, pd.DataFrame()), auto_refresh=False)
    empty = SampleCapture()                                     # len 0: must still be taken as given
    assert LiveTraining(FakeSession(module, pd.DataFrame()), empty, auto_refresh=False).capture is empty
    tr = SimpleNamespace(callbacks=[object(), SampleCapture()])
    assert isinstance(find_capture(SimpleNamespace(trainer=tr)), SampleCapture)
    assert isinstance(find_capture(SimpleNamespace(run=SimpleNamespace(trainer=tr))), SampleCapture)


def test_loss_plot_handles_missing_columns():
    a = loss_plot_png(pd.DataFrame())
    b = loss_plot_png(pd.DataFrame({"train/loss_g": [1.0, 0.5], "train/loss_d": [0.7, 0.69]}))
    assert a != b and png_size(a) == png_size(b)


# ---- with the real trainer ----
def test_background_run_stop_button_and_error(tmp_path):
    trainer = pytest.importorskip("gan_engine.trainer")
    from gan_engine.widgets import live_training
    cfg = tiny_config(SAMPLES, [f"Logging.output_dir={tmp_path}/run", "Training.max_steps=100000",
                                "Training.val_every_n_steps=0", "Trainer.enable_model_summary=false"])
    live = live_training(cfg, every_n_steps=2, num_samples=2, refresh_every=0.05)
    try:
        deadline = time.time() + 60
        while (live.capture.latest is None or live.capture.latest.step < 4) and time.time() < deadline: time.sleep(0.05)
        assert live.state == "running" and live.auto_refreshing
        live.stop_button.click()
        live.session.wait(60)
    finally:
        live.session.stop(wait=True, timeout=60)
    live._thread.join(10)
    assert not live.session.running and live.state == "stopped"
    assert 4 <= live.module.g_step < 100000
    assert live.session.stopper.saved.exists()
    assert live.inspector.state["step"] == live.module.g_step   # the final capture reached the widget
    assert "stopped" in live.status.value and str(live.module.g_step) in live.status.value

    class Boom(L.Callback):
        def on_train_batch_end(self, *a): raise RuntimeError("boom in the training thread")
    cap = SampleCapture(every_n_steps=1)
    bg = trainer.fit_in_background(tiny_config(SAMPLES, [f"Logging.output_dir={tmp_path}/boom", "Trainer.enable_model_summary=false"]),
                                   callbacks=[cap, Boom()])
    with pytest.raises(RuntimeError): bg.wait(60)
    dash = LiveTraining(bg, cap)
    assert dash.state == "failed" and "boom in the training thread" in dash.status.value
    assert "Traceback" in dash.status.value
