"""Browser test: the SR quickstart tutorial in a real JupyterLab, driven by Debian's Chromium via Playwright.

What it does:
1. copies `nbs/tutorials/01_sr_quickstart.ipynb` into a temporary folder (JupyterLab's autosave never
   touches the repository) and starts JupyterLab there on 127.0.0.1 with a random token, with fresh
   settings (no news/update checks, notebook windowing off so every cell is in the page);
2. starts Chromium (`/usr/bin/chromium`, headless, no sandbox, no GPU, background networking off) with a
   remote-debugging port and attaches Playwright's Python package to it (no `playwright install`);
3. opens the tutorial, waits for the status text "Python 3 (ipykernel) | Idle", runs all cells
   (Run → Run All Cells) with `GAN_ENGINE_TUTORIAL_STEPS` set (short run) and waits until every cell ran;
4. checks: no error outputs, no "Loading widget" left, the inspector is there with LR/SR/HR/error images
   whose `naturalWidth > 0`, and moving the step slider with the keyboard changes the SR image's `src`
   and the step label;
5. saves screenshots (whole page, the dashboard before and after the slider move) in `--out` and prints
   the folder; kills Chromium and JupyterLab by PID (kernels are shut down through the server's API first).

Run from the repository root with the project's environment:

    .venv/bin/python tests/browser/run_browser_test.py            # exit status 0 = passed
    .venv/bin/python tests/browser/run_browser_test.py --steps 20 --out /tmp/shots --keep

Needs: `apt-get install -y chromium`, `pip install jupyterlab playwright` (in the same environment as
gan_engine, which must be installed editable so the tutorial finds `data_samples/`).
"""
from __future__ import annotations
import argparse, json, os, secrets, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TUTORIAL = REPO / "nbs" / "tutorials" / "01_sr_quickstart.ipynb"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
                 "--disable-sync", "--disable-extensions", "--disable-domain-reliability", "--metrics-recording-only",
                 "--no-first-run", "--no-default-browser-check", "--disable-features=Translate,OptimizationHints,MediaRouter",
                 "--window-size=1500,1100"]
IDLE = "Python 3 (ipykernel) | Idle"


def log(*a): print("[browser-test]", *a, flush=True)


def free_port()->int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def http(url:str, method:str="GET", timeout:float=5.0):
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read()
        return json.loads(body) if body else None


def wait_for(fn, timeout:float, what:str, every:float=0.25):
    end = time.time() + timeout
    last = None
    while time.time() < end:
        try:
            v = fn()
            if v: return v
        except Exception as e: last = e
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last!r})" if last else ""))


def write_settings(settings_dir:Path):
    "JupyterLab user settings: no news or update checks, every cell rendered (no windowing)."
    def put(ext, name, data):
        p = settings_dir / ext / f"{name}.jupyterlab-settings"
        p.parent.mkdir(parents=True, exist_ok=True); p.write_text(json.dumps(data))
    put("@jupyterlab/apputils-extension", "notification", {"checkForUpdates": False, "fetchNews": "false"})
    put("@jupyterlab/notebook-extension", "tracker", {"windowingMode": "none"})
    put("@jupyterlab/docmanager-extension", "plugin", {"autosave": False})


def start_jupyter(work:Path, port:int, token:str, env:dict, log_path:Path)->subprocess.Popen:
    exe = Path(sys.executable).parent / "jupyter-lab"
    cmd = [str(exe) if exe.exists() else "jupyter-lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0: cmd.append("--allow-root")  # CI containers run as root
    return subprocess.Popen(cmd, cwd=work, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def start_chromium(work:Path, port:int, log_path:Path)->subprocess.Popen:
    exe = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    cmd = [exe, *CHROMIUM_ARGS, f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
           f"--user-data-dir={work / 'chromium-profile'}", "about:blank"]
    return subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def kill(proc:subprocess.Popen|None, name:str):
    "End a process we started (and its process group) by PID: SIGTERM, then SIGKILL."
    if proc is None or proc.poll() is not None: return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try: os.killpg(proc.pid, sig)
        except ProcessLookupError: return
        try: proc.wait(wait); log(f"{name} (pid {proc.pid}) ended"); return
        except subprocess.TimeoutExpired: continue


def run(steps:int, out:Path, timeout:float, keep:bool)->int:
    from playwright.sync_api import sync_playwright
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gan_engine_browser_"))
    nb = work / "01_sr_quickstart.ipynb"
    shutil.copy(TUTORIAL, nb)
    cfg = work / "jupyter"; write_settings(cfg / "lab-user-settings")
    env = {**os.environ, "GAN_ENGINE_TUTORIAL_STEPS": str(steps), "JUPYTER_CONFIG_DIR": str(cfg / "config"),
           "JUPYTERLAB_SETTINGS_DIR": str(cfg / "lab-user-settings"), "JUPYTERLAB_WORKSPACES_DIR": str(cfg / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(cfg / "runtime"), "IPYTHONDIR": str(cfg / "ipython"), "MPLBACKEND": "Agg",
           "PYTHONUNBUFFERED": "1"}
    env.pop("IN_TEST", None)
    jport, cport, token = free_port(), free_port(), secrets.token_hex(16)
    server = browser = None
    failures: list[str] = []
    try:
        server = start_jupyter(work, jport, token, env, out / "jupyterlab.log")
        log(f"JupyterLab pid {server.pid} on 127.0.0.1:{jport}, working folder {work}")
        base = f"http://127.0.0.1:{jport}"
        def up():
            if server.poll() is not None: raise SystemExit(f"JupyterLab exited with status {server.returncode}; see jupyterlab.log")
            return http(f"{base}/api/status?token={token}")
        wait_for(up, 90, "JupyterLab to answer")
        browser = start_chromium(work, cport, out / "chromium.log")
        log(f"Chromium pid {browser.pid}, debugging port {cport}")
        wait_for(lambda: http(f"http://127.0.0.1:{cport}/json/version"), 60, "Chromium's debugging port")
        with sync_playwright() as p:
            b = p.chromium.connect_over_cdp(f"http://127.0.0.1:{cport}")
            ctx = b.contexts[0] if b.contexts else b.new_context()
            page = ctx.new_page()
            page.set_viewport_size({"width": 1500, "height": 1100})
            page.goto(f"{base}/lab/tree/{nb.name}?token={token}&reset", wait_until="domcontentloaded", timeout=90_000)
            page.get_by_text(IDLE).first.wait_for(timeout=120_000)
            log("kernel idle; running all cells")
            page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            n_code = page.locator(".jp-Notebook .jp-CodeCell").count()
            log(f"{n_code} code cells")
            t0 = time.time()
            def all_ran():
                prompts = page.locator(".jp-Notebook .jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
                done = [p for p in prompts if p.strip() not in ("[ ]:", "[*]:", "")]
                return len(prompts) == n_code and len(done) == n_code and page.get_by_text(IDLE).count() > 0
            wait_for(all_ran, timeout, "every cell to run", every=1.0)
            log(f"all cells ran in {time.time() - t0:.0f} s")
            errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')
            if errors.count():
                failures.append("error output in the notebook: " + errors.first.inner_text()[:2000])
            try: wait_for(lambda: page.get_by_text("Loading widget").count() == 0, 60, "widgets to render")
            except TimeoutError as e: failures.append(str(e))
            insp = page.locator(".gan-engine-inspector")
            if insp.count() == 0: failures.append("no inspector in the page")
            dash = page.locator(".gan-engine-live").first
            dash.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            page.screenshot(path=str(out / "01_notebook_after_run.png"), full_page=True)
            dash.screenshot(path=str(out / "02_dashboard.png"))
            first = insp.first
            sizes = first.locator("img").evaluate_all("els => els.map(e => [e.className, e.naturalWidth, e.naturalHeight])")
            log("inspector images (class, naturalWidth, naturalHeight):", sizes)
            for k in ("lr", "sr", "hr", "error"):
                hit = [s for s in sizes if f"gan-engine-{k}" in s[0]]
                if not hit or hit[0][1] <= 0: failures.append(f"inspector image {k!r} is empty or missing: {hit}")
            status = page.locator(".gan-engine-status").first.inner_text()
            log("status line:", status.strip().splitlines()[0] if status.strip() else "(empty)")
            if "finished" not in status: failures.append(f"status line does not say finished: {status[:300]!r}")
            # move the step slider with the keyboard; the SR image must change
            sr = first.locator("img.gan-engine-sr")
            label_before = first.locator(".gan-engine-step-label").inner_text()
            before = sr.get_attribute("src")
            handle = first.locator(".gan-engine-step .noUi-handle").first
            handle.focus(); page.keyboard.press("ArrowLeft"); page.keyboard.press("ArrowLeft")
            try:
                wait_for(lambda: sr.get_attribute("src") != before, 30, "the SR image to change after moving the step slider")
            except TimeoutError as e: failures.append(str(e))
            label_after = first.locator(".gan-engine-step-label").inner_text()
            log(f"step label: {label_before.strip()!r} -> {label_after.strip()!r}")
            if label_after == label_before: failures.append("the step label did not change")
            page.wait_for_timeout(300)
            dash.screenshot(path=str(out / "03_dashboard_step_moved.png"))
            after_sizes = sr.evaluate("e => [e.naturalWidth, e.naturalHeight]")
            if after_sizes[0] <= 0: failures.append(f"SR image empty after the slider move: {after_sizes}")
            page.close()
            b.close()
    except (Exception, SystemExit) as e:
        failures.append(f"{type(e).__name__}: {e}")
    finally:
        if server is not None and server.poll() is None:
            try:
                for k in http(f"http://127.0.0.1:{jport}/api/kernels?token={token}") or []:
                    http(f"http://127.0.0.1:{jport}/api/kernels/{k['id']}?token={token}", method="DELETE", timeout=20)
            except Exception as e: log("kernel shutdown through the API failed:", repr(e))
        kill(browser, "Chromium")
        kill(server, "JupyterLab")
        if not keep: shutil.rmtree(work, ignore_errors=True)
    log(f"Screenshots and logs: {out}")
    for f in sorted(out.iterdir()): log("  ", f.name)
    if failures:
        for f in failures: log("FAIL:", f)
        return 1
    log("PASSED")
    return 0


def main(argv=None)->int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=24, help="training steps for the tutorial (GAN_ENGINE_TUTORIAL_STEPS)")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "browser" / "screenshots", help="screenshot folder")
    ap.add_argument("--timeout", type=float, default=400, help="seconds allowed for running all cells")
    ap.add_argument("--keep", action="store_true", help="keep the temporary working folder")
    a = ap.parse_args(argv)
    return run(a.steps, a.out.resolve(), a.timeout, a.keep)


if __name__ == "__main__": sys.exit(main())
