"""Browser check of the built docs site (`python docs/build.py` writes `_site/`) in Debian's Chromium.

The site is served from a local HTTP server on 127.0.0.1 (as a static host would serve it); Chromium
starts headless with a remote-debugging port and Playwright attaches over CDP (no `playwright install`).
Two pages are opened, the index and one module page (default `render.html`, whose outputs include
plots), and each must render:

- the page title and the first heading are the notebook's title;
- the Material theme's stylesheet applied (the header bar has a height and a fixed/sticky position);
- at least one rendered code cell: a `pre > code` block with syntax-highlighting spans;
- the module page: an image from the notebook's outputs, loaded (`naturalWidth > 0`), and `show_doc`
  entries (a heading with the symbol's anchor, then its signature with the documented parameters);
- no broken images on either page, and no JavaScript errors.

    .venv/bin/python tests/browser/site_check.py [--site _site] [--page render.html] [--out DIR]

Exit status 0 and a last line `[site-check] PASSED` mean it passed; each failed check prints `FAIL:`.
"""
from __future__ import annotations
import argparse, functools, http.server, sys, tempfile, threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_browser_test import free_port, kill, start_chromium, wait_for   # the same Chromium set-up as the JupyterLab test

REPO = Path(__file__).resolve().parents[2]


def log(*a): print("[site-check]", *a, flush=True)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass


def serve(folder:Path)->tuple[http.server.ThreadingHTTPServer, int]:
    port = free_port()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, port


PAGE_FACTS = """() => {
  const header = document.querySelector('.md-header');
  const style = header ? getComputedStyle(header) : null;
  const imgs = [...document.querySelectorAll('.md-content img')];
  return {
    title: document.title,
    h1: (document.querySelector('.md-content h1') || {}).textContent || '',
    header: style ? {height: header.getBoundingClientRect().height, position: style.position} : null,
    code_blocks: document.querySelectorAll('.md-content pre code').length,
    highlighted: document.querySelectorAll('.md-content .highlight pre code span[class]').length,
    images: imgs.map(i => ({src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth})),
    tables: document.querySelectorAll('.md-content table').length,
    show_docs: [...document.querySelectorAll('.md-content h3[id]')].filter(h => {
      const next = h.nextElementSibling; return next && /(^|\\s)(def|class) /.test(next.textContent); }).length,
    nav_links: document.querySelectorAll('.md-nav a.md-nav__link').length,
  };
}"""


def check_page(page, url:str, want_image:bool, out:Path, shot:str)->list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="load")
    wait_for(lambda: page.evaluate("() => [...document.images].every(i => i.complete)"), 30, f"images of {url}")
    facts = page.evaluate(PAGE_FACTS)
    page.screenshot(path=str(out / shot), full_page=False)
    name = url.rsplit("/", 1)[-1] or "index.html"
    log(f"{name}: title {facts['title']!r}, h1 {facts['h1'].strip()!r}, {facts['code_blocks']} code blocks "
        f"({facts['highlighted']} highlighted spans), {len(facts['images'])} images, {facts['tables']} tables, "
        f"{facts['show_docs']} show_doc entries, "
        f"{facts['nav_links']} nav links")
    fails = []
    h1 = facts["h1"].replace("¶", "").strip()
    if not h1 or h1 not in facts["title"]: fails.append(f"{name}: the title {facts['title']!r} does not carry the heading {h1!r}")
    if not facts["header"] or facts["header"]["height"] < 20 or facts["header"]["position"] not in ("sticky", "fixed"):
        fails.append(f"{name}: the theme's stylesheet did not apply (header {facts['header']})")
    if facts["code_blocks"] < 1 or facts["highlighted"] < 5:
        fails.append(f"{name}: no rendered code cell ({facts['code_blocks']} code blocks, {facts['highlighted']} highlighted spans)")
    broken = [i["src"] for i in facts["images"] if i["width"] == 0]
    if broken: fails.append(f"{name}: images that did not load: {broken[:5]}")
    if want_image:
        if not [i for i in facts["images"] if i["width"] > 0]: fails.append(f"{name}: no image from the notebook's outputs")
        if facts["show_docs"] < 3: fails.append(f"{name}: {facts['show_docs']} show_doc entries (a heading, then the signature)")
    if facts["nav_links"] < 10: fails.append(f"{name}: the navigation lists {facts['nav_links']} pages")
    if errors: fails.append(f"{name}: JavaScript errors: {errors[:3]}")
    return fails


def run(site:Path, module_page:str, out:Path)->int:
    from playwright.sync_api import sync_playwright
    if not (site / "index.html").is_file():
        log(f"FAIL: {site / 'index.html'} does not exist; build the site first: python docs/build.py"); return 1
    if not (site / module_page).is_file():
        log(f"FAIL: {site / module_page} does not exist (pages: {sorted(p.name for p in site.glob('*.html'))[:20]})"); return 1
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gan_engine_site_"))
    srv, port = serve(site)
    cport = free_port()
    browser = None
    fails: list[str] = []
    try:
        browser = start_chromium(work, cport, out / "chromium-site.log")
        wait_for(lambda: __import__("urllib.request").request.urlopen(f"http://127.0.0.1:{cport}/json/version", timeout=2).status == 200,
                 30, "Chromium's debugging port")
        with sync_playwright() as pw:
            chrome = pw.chromium.connect_over_cdp(f"http://127.0.0.1:{cport}")
            page = chrome.contexts[0].new_page() if chrome.contexts else chrome.new_context().new_page()
            page.set_viewport_size({"width": 1300, "height": 1000})
            fails += check_page(page, f"http://127.0.0.1:{port}/index.html", False, out, "site_index.png")
            fails += check_page(page, f"http://127.0.0.1:{port}/{module_page}", True, out, "site_module_page.png")
            chrome.close()
    finally:
        kill(browser, "Chromium"); srv.shutdown()
    for f in fails: log("FAIL:", f)
    log(f"screenshots in {out}")
    log("PASSED" if not fails else f"FAILED ({len(fails)} checks)")
    return 0 if not fails else 1


def main(argv=None)->int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--site", default=str(REPO / "_site"), help="the built site (default: _site/)")
    ap.add_argument("--page", default="render.html", help="the module page to check (default: render.html)")
    ap.add_argument("--out", default=str(REPO / "tests" / "browser" / "screenshots"), help="screenshots folder")
    a = ap.parse_args(argv)
    return run(Path(a.site), a.page, Path(a.out))


if __name__ == "__main__":
    sys.exit(main())
