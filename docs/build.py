#!/usr/bin/env python
"""Build gan_engine's documentation site from the notebooks, without Quarto.

    python docs/build.py            # executes every notebook, writes the site to _site/
    python docs/build.py --open     # ... then opens _site/index.html in a browser

Each notebook goes through nbdev's own documentation processors (the ones `nbdev-proc-nbs` uses before
Quarto: `show_doc` tables with docments, hidden cells removed, backticked names linked), except that every
cell runs — like `nbdev-test`: same skipped flags, `IN_TEST=1`, the notebook's folder as working directory —
so the pages carry the outputs (tables, plots) that the committed notebooks leave out. nbconvert turns
each processed notebook into a Markdown page (plots extracted beside it), and Zensical — the maintained
successor of MkDocs-Material, which reaches end of life in May 2027 — builds the site from a
`mkdocs.yml`; `--builder mkdocs` builds the same pages with MkDocs-Material instead (`pip install -e
".[docs]"` installs both). The config reference page is written from the schema (`describe_config()`),
never by hand.

The build fails on a notebook error, on a failed site build (MkDocs in strict mode), and on a broken
internal link, anchor or image in the built HTML (`check_links`). Users with Quarto can still run `nbdev-docs`.
"""
from __future__ import annotations

import argparse, html.parser, json, os, re, shutil, subprocess, sys, time, webbrowser
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "_docs_src"     # processed notebooks and generated pages (MkDocs' docs_dir)
SITE = ROOT / "_site"
DOC_URL = "https://gan-engine.github.io/gan_engine/"   # the address nbdev's links point to (pyproject: Documentation)
_NUM_PREFIX = re.compile(r"^\d+[a-zA-Z0-9]*_")


def page_name(rel:Path)->Path:
    "The page a notebook becomes, as nbdev names it: `tutorials/01_sr_quickstart.ipynb` -> `tutorials/sr_quickstart.ipynb`."
    return rel.with_name(_NUM_PREFIX.sub("", rel.name.lower()))


def notebooks(nbs:Path)->list[Path]:
    "Every notebook under `nbs`, relative paths, in nbdev's order (folders after the files beside them)."
    found = [p.relative_to(nbs) for p in nbs.rglob("*.ipynb")
             if not any(part.startswith((".", "_")) for part in p.relative_to(nbs).parts)]
    return sorted(found, key=lambda p: (len(p.parts), p.as_posix()))


# ---------------------------------------------------------------- one notebook (runs in a worker process)
def _make_filter(skip_flags:list[str]):
    "nbdev's documentation processors with `exec_show_docs` (imports, exports and show_doc cells only) replaced by a run of every cell."
    from execnb.shell import CaptureShell
    from nbdev.processors import FilterDefaults, Processor, exec_show_docs
    from nbdev.test import _skip_cell   # nbdev-test's own rule for which cells run, so both agree

    class exec_all(Processor):
        "Run every cell nbdev-test would run, keeping the outputs; stop at the first error."
        def begin(self):
            self.k = CaptureShell(path=Path.cwd())
            self.k.run_cell("from nbdev.showdoc import show_doc")
            self.skip = _skip_cell(self.nb, skip_flags)
        def __call__(self, cell):
            if self.skip(cell): return
            self.k.cell(cell, timeout=600)
            if self.k.exc:
                e = self.k.exc
                raise RuntimeError(f"cell {cell.idx_} raised {type(e).__name__}: {e}\n--- cell source ---\n{cell.source}") from None

    class DocsFilter(FilterDefaults):
        def base_procs(self): return [exec_all if p is exec_show_docs else p for p in super().base_procs()]
    return DocsFilter


def process_notebook(job:tuple[str, str, list[str]])->tuple[str, float, str|None]:
    "Execute and process one notebook into the staging folder; returns (name, seconds, error or None)."
    src, dst, skip_flags = Path(job[0]), Path(job[1]), job[2]
    t0 = time.time()
    os.environ["IN_TEST"] = "1"
    os.chdir(src.parent)
    sys.path.insert(0, str(ROOT))
    try:
        from fastcore.nbio import read_nb, write_nb
        nb = read_nb(src)
        _make_filter(skip_flags)()(nb)
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_nb(nb, dst)
        return str(src), time.time() - t0, None
    except Exception as e:  # reported with the notebook's name by the parent
        return str(src), time.time() - t0, f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------- from processed notebook to MkDocs page
_ATTRS = re.compile(r"\)\{[^{}\n]*\}")                      # Quarto link attributes: [source](url){target="_blank" ...}
_QUARTO_DIRECTIVE = re.compile(r"^#\|\s*([\w-]+)\s*:\s*(.*)$")
_MD_LINK = re.compile(r"(\]\()([^)\s]+?\.ipynb)(#[^)\s]*)?(\))")


_SHOWDOC_HEADING = re.compile(r"^(#{2,4}) ([\w.]+)\s*$", re.M)

def _anchor_headings(md:str)->str:
    "show_doc headings keep nbdev's anchors (`#registry.build`, lower case) and their underscores (no Markdown bold)."
    return _SHOWDOC_HEADING.sub(lambda m: f"{m.group(1)} {m.group(2).replace('_', chr(92) + '_')} {{#{m.group(2).lower()}}}", md)


def to_markdown(nb_path:Path)->Path:
    "The processed notebook as a Markdown page beside it; plots go to `<page>_files/`. Returns the page."
    from nbconvert import MarkdownExporter
    from nbconvert.preprocessors import TagRemovePreprocessor
    from traitlets.config import Config
    c = Config()
    c.TagRemovePreprocessor.remove_input_tags = {"remove_input"}
    c.TagRemovePreprocessor.remove_all_outputs_tags = {"remove_output"}
    c.TagRemovePreprocessor.remove_cell_tags = {"remove_cell"}
    exporter = MarkdownExporter(config=c)
    exporter.register_preprocessor(TagRemovePreprocessor(config=c), enabled=True)
    files = f"{nb_path.stem}_files"
    body, res = exporter.from_filename(str(nb_path), resources={"output_files_dir": files})
    for name, data in res.get("outputs", {}).items():
        out = nb_path.parent / name
        out.parent.mkdir(parents=True, exist_ok=True); out.write_bytes(data)
    page = nb_path.with_suffix(".md")
    page.write_text(body)
    nb_path.unlink()
    return page


_EXPLICIT_ID = re.compile(r"\{#([^}\s]+)\}")
_HEADING = re.compile(r"^#{1,6} (.+?)\s*$", re.M)
_MD_ANCHOR_LINK = re.compile(r"\]\(([\w/.-]+\.md)#([^)\s]+)\)")

def _slug(text:str)->str:
    "Python-Markdown's default heading id (toc's slugify)."
    import unicodedata
    text = unicodedata.normalize("NFKD", re.sub(r"<[^>]+>", "", text)).encode("ascii", "ignore").decode()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())

def page_anchors(md:str)->set[str]:
    "The ids a page's headings get: explicit `{#id}` ones and slugs of the others."
    ids = set(_EXPLICIT_ID.findall(md))
    for h in _HEADING.findall(md):
        if not _EXPLICIT_ID.search(h): ids.add(_slug(h))
    return ids

def fix_anchors(stage:Path)->int:
    """nbdev links every backticked name to its symbol's anchor, but a method written inside its class body has no
    heading of its own: point such links at the class (`run.plot` -> `run`), else at the page. Returns links changed."""
    pages = {p: p.read_text() for p in stage.rglob("*.md")}
    anchors = {p: page_anchors(t) for p, t in pages.items()}
    changed = 0
    for page, text in pages.items():
        def fix(m):
            nonlocal changed
            target = Path(os.path.normpath(page.parent / m.group(1)))
            ids, frag = anchors.get(target), m.group(2)
            if ids is None or frag in ids: return m.group(0)
            parts = frag.split(".")
            while parts and ".".join(parts) not in ids: parts.pop()
            changed += 1
            return f"]({m.group(1)}" + (f"#{'.'.join(parts)}" if parts else "") + ")"
        new = _MD_ANCHOR_LINK.sub(fix, text)
        if new != text: page.write_text(new)
    return changed


def _front_matter(cell)->dict:
    import yaml
    text = "".join(cell["source"]).strip()
    if not text.startswith("---"): return {}
    return yaml.safe_load(text.strip("-\n")) or {}


def _local_links(text:str, depth:int, here:Path, pages:dict[str, str])->str:
    "nbdev's absolute doc links and links to notebooks, made relative to the page at `depth` folders down."
    up = "../" * depth
    # to the Markdown source, which every builder turns into the page's URL (directory URLs or not)
    text = re.sub(re.escape(DOC_URL) + r"([\w/.-]+?)\.html", lambda m: f"{up}{m.group(1)}.md", text)
    text = _ATTRS.sub(")", text)
    def to_page(m):
        target = (here.parent / m.group(2)).as_posix()
        target = os.path.normpath(target).replace(os.sep, "/")
        page = pages.get(target)
        if page is None: return m.group(0)          # left for the link check to report
        return f"{m.group(1)}{up}{Path(page).with_suffix('.md').as_posix()}{m.group(3) or ''}{m.group(4)}"
    return _MD_LINK.sub(to_page, text)


def finish_page(path:Path, rel_src:Path, pages:dict[str, str])->str:
    "Turn nbdev's Quarto-oriented notebook into one mkdocs-jupyter renders well; returns the page title."
    nb = json.loads(path.read_text())
    page = Path(pages[rel_src.as_posix()])
    depth = len(page.parts) - 1
    cells, title = [], page.stem.replace("_", " ").capitalize()
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "raw" and src.lstrip().startswith("---"):
            fm = _front_matter(cell)
            title = fm.get("title", title)
            head = f"# {title}" + (f"\n\n> {fm['description']}" if fm.get("description") else "")
            cells.append({"cell_type": "markdown", "metadata": {}, "source": head}); continue
        if cell["cell_type"] == "markdown":
            if src.startswith("<!-- WARNING: THIS FILE WAS AUTOGENERATED"): continue
            cell["source"] = _local_links(src, depth, rel_src, pages)
        if cell["cell_type"] == "code":
            keep, tags = [], set(cell.get("metadata", {}).get("tags", []))
            for line in src.splitlines():
                m = _QUARTO_DIRECTIVE.match(line)
                if not m: keep.append(line); continue
                key, value = m.group(1), m.group(2).strip().lower()
                if key == "echo" and value == "false": tags.add("remove_input")
                if key == "output" and value == "false": tags.add("remove_output")
                if key == "include" and value == "false": tags.add("remove_cell")
            cell["source"] = "\n".join(keep).strip("\n")
            cell.setdefault("metadata", {})["tags"] = sorted(tags)
            cell["metadata"].pop("execution", None)   # execnb's timings: not nbformat-valid, not for readers
            for out in cell.get("outputs", []):
                data = out.get("data", {})
                if "text/markdown" in data:
                    md = "".join(data["text/markdown"])
                    data["text/markdown"] = _anchor_headings(_local_links(md, depth, rel_src, pages))
            if "remove_cell" in tags: continue
            if not cell["source"] and not cell.get("outputs"): continue
        cells.append(cell)
    nb["cells"] = cells
    nb.setdefault("metadata", {}).pop("widgets", None)   # no live widget state in a static page
    nb["metadata"]["language_info"] = {"name": "python"}   # nbconvert fences code cells with it: highlighted as Python
    path.write_text(json.dumps(nb, indent=1))
    return title


def config_reference_page()->str:
    "The config reference as Markdown: every key of the schema with its default, type, accepted values and meaning."
    from gan_engine.config import describe_config
    df = describe_config()
    esc = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    out = ["# Config reference", "",
           "> Every key of a gan_engine YAML config: its default, type, accepted values and meaning. "
           "Generated from the schema (`gan_engine.config.describe_config()`) when the site is built.", "",
           "A config names only what differs from these defaults; `load_config` fills the rest, and an unknown key or a "
           "value outside the accepted ones is an error naming the key. Any `lightning.Trainer` keyword goes in `Trainer:`.", ""]
    for section, rows in df.groupby(df["key"].str.split(".").str[0], sort=False):
        out += [f"## {section}", "", "| key | default | type | accepted | meaning |", "|---|---|---|---|---|"]
        for r in rows.itertuples():
            out.append(f"| `{esc(r.key)}` | `{esc(r.default)}` | {esc(r.type)} | {esc(r.allowed)} | {esc(r.meaning)} |")
        out.append("")
    return "\n".join(out)


def mkdocs_config(nav:list)->dict:
    "One `mkdocs.yml` that Zensical and MkDocs-Material both read."
    return {
        "site_name": "gan_engine", "site_description": "Jupyter-first GAN toolkit for image-to-image work",
        "repo_url": "https://github.com/gan-engine/gan_engine",
        "docs_dir": STAGE.name, "site_dir": SITE.name,   # relative to mkdocs.yml (Zensical needs that)
        "use_directory_urls": False,     # pages as files: the site opens from disk (file://); strictness: --strict
        "theme": {"name": "material", "font": False,   # no web fonts: the site reads offline
                  "features": ["navigation.sections", "navigation.top", "search.highlight", "content.code.copy"]},
        "plugins": ["search"],
        "markdown_extensions": ["tables", "admonition", "attr_list", "md_in_html", {"toc": {"permalink": True}},
                                {"pymdownx.highlight": {"use_pygments": True}}, "pymdownx.superfences"],
        "nav": nav,
    }


# ---------------------------------------------------------------- link check of the built site
class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(); self.ids, self.refs = set(), []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("id", "name"):
            if a.get(key): self.ids.add(a[key])
        if tag == "a" and a.get("href"): self.refs.append(("link", a["href"]))
        if tag in ("img", "script") and a.get("src"): self.refs.append((tag, a["src"]))
        if tag == "link" and a.get("href") and a.get("rel") != ["preconnect"]: self.refs.append(("stylesheet", a["href"]))


def check_links(site:Path)->list[str]:
    "Every relative link, image, script and stylesheet in the built HTML must resolve to a file, and #anchors to an id there."
    parsed = {}
    def parse(p):
        if p not in parsed:
            r = _Links(); r.feed(p.read_text(errors="replace")); parsed[p] = r
        return parsed[p]
    problems = []
    for page in sorted(site.rglob("*.html")):
        if page.relative_to(site).parts[0] in ("assets", "search") or page.name == "404.html": continue   # 404.html uses site-absolute paths
        for kind, ref in parse(page).refs:
            u = urlsplit(ref)
            if u.scheme or ref.startswith("//") or ref.startswith(("mailto:", "javascript:", "data:")): continue
            target = page if not u.path else (page.parent / unquote(u.path))
            if u.path.endswith("/"): target = target / "index.html"
            target = Path(os.path.normpath(target))
            where = f"{page.relative_to(site)}: {kind} {ref!r}"
            if not target.exists(): problems.append(f"{where} -> no such file"); continue
            if u.fragment and target.suffix == ".html":
                ids = parse(target).ids
                if u.fragment not in ids and u.fragment.lower() not in {i.lower() for i in ids}:
                    problems.append(f"{where} -> no anchor #{u.fragment} in {target.relative_to(site)}")
    return problems


# ---------------------------------------------------------------- the build
def build(flags:str="slow", workers:int=2, only:str|None=None, open_site:bool=False, builder:str="zensical")->Path:
    sys.path.insert(0, str(ROOT))
    from nbdev.config import get_config
    cfg = get_config(str(ROOT))
    nbs = Path(cfg.nbs_path)
    skip = sorted(set(str(cfg.get("tst_flags", "")).split()) - set(flags.split()))
    rels = notebooks(nbs)
    pages = {r.as_posix(): page_name(r).as_posix() for r in rels}
    names = [p for p in pages.values()]
    if len(set(names)) != len(names): raise SystemExit(f"two notebooks map to the same page: {sorted(names)}")
    todo = [r for r in rels if only is None or Path(r).match(only)]
    if STAGE.exists(): shutil.rmtree(STAGE)
    STAGE.mkdir()
    jobs = [(str(nbs / r), str(STAGE / pages[r.as_posix()]), skip) for r in todo]
    print(f"Executing and processing {len(jobs)} notebooks ({workers} at a time; skipped flags: {' '.join(skip) or 'none'})", flush=True)
    failed = []
    def run(job):   # each notebook in its own interpreter, like nbdev-test (and free to start loader workers)
        r = subprocess.run([sys.executable, __file__, "--process-one", json.dumps(job)], cwd=ROOT,
                           env=dict(os.environ, MPLBACKEND=os.environ.get("MPLBACKEND", "Agg")), capture_output=True, text=True)
        last = r.stdout.strip().splitlines()[-1:] if r.stdout.strip() else []
        try: return json.loads(last[0])
        except (IndexError, json.JSONDecodeError): return [job[0], 0.0, f"worker exited with {r.returncode}: {r.stderr[-3000:]}"]
    with ThreadPoolExecutor(workers) as pool:
        for name, secs, err in pool.map(run, jobs):
            rel = Path(name).relative_to(nbs)
            print(f"  {rel}: {secs:.0f} s" + (f"  FAILED\n{err}" if err else ""), flush=True)
            if err: failed.append(f"{rel}: {err}")
    if failed: raise SystemExit("notebook errors (the site was not built):\n" + "\n".join(failed))

    titles = {r.as_posix(): finish_page(STAGE / pages[r.as_posix()], r, pages) for r in todo}
    for r in todo: to_markdown(STAGE / pages[r.as_posix()])
    print(f"Links to names without a heading of their own, pointed at their class or page: {fix_anchors(STAGE)}", flush=True)
    pages = {k: str(Path(v).with_suffix(".md")) for k, v in pages.items()}
    (STAGE / "config_reference.md").write_text(config_reference_page())
    home = [r for r in todo if r.as_posix() == "index.ipynb"]
    tutorials = [r for r in todo if r.parts[0] == "tutorials"]
    modules = [r for r in todo if r not in home and r not in tutorials]
    nav = ([{"Home": pages["index.ipynb"]}] if home else []) + \
          ([{"Tutorials": [{titles[r.as_posix()]: pages[r.as_posix()]} for r in tutorials]}] if tutorials else []) + \
          [{"Reference": [{"Config reference": "config_reference.md"}] + [{titles[r.as_posix()]: pages[r.as_posix()]} for r in modules]}]
    import yaml
    conf = ROOT / "mkdocs.yml"   # generated (git-ignored): the nav follows the notebooks
    conf.write_text("# Written by docs/build.py from the notebooks; edit that script, not this file.\n"
                    + yaml.safe_dump(mkdocs_config(nav), sort_keys=False))
    if SITE.exists(): shutil.rmtree(SITE)
    print(f"Rendering with {builder}", flush=True)
    strict = ["--strict"] if only is None else []   # a partial site (--only) links to pages it does not build
    cmd = ([sys.executable, "-m", "zensical", "build", "--clean", *strict] if builder == "zensical"
           else [sys.executable, "-m", "mkdocs", "build", *strict, "-f", str(conf)])
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", NO_COLOR="1")   # plain text in CI logs
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    print(r.stdout[-4000:], r.stderr[-4000:], sep="\n", flush=True)
    if r.returncode: raise SystemExit(f"{builder} build failed (exit {r.returncode})")
    problems = check_links(SITE)
    if only is not None:   # links to the pages left out are expected to break
        problems = [p for p in problems if "no such file" not in p]
        print(f"Partial site (--only {only!r}): links to pages not built are not checked")
    if problems:
        raise SystemExit(f"{len(problems)} broken internal links in the built site:\n" + "\n".join(problems[:100]))
    n_pages = len(list(SITE.glob("**/*.html")))
    print(f"Site built: {SITE / 'index.html'} ({n_pages} HTML files, links checked)")
    if open_site: webbrowser.open((SITE / "index.html").as_uri())
    return SITE


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--process-one"]:   # internal: one notebook, result as a JSON line
        print(json.dumps(process_notebook(tuple(json.loads(argv[1]))))); return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flags", default=os.environ.get("NBDEV_TEST_FLAGS", "slow"),
                    help="tst_flags whose cells run, as for nbdev-test (default: slow)")
    ap.add_argument("--workers", type=int, default=2, help="notebooks executed at once (default 2)")
    ap.add_argument("--only", help="build only the notebooks matching this glob (a quick look at a few pages)")
    ap.add_argument("--open", action="store_true", help="open the built site in a browser")
    ap.add_argument("--builder", choices=("zensical", "mkdocs"), default="zensical",
                    help="site builder reading the generated mkdocs.yml (default zensical; mkdocs = MkDocs-Material)")
    a = ap.parse_args(argv)
    build(a.flags, a.workers, a.only, a.open, a.builder)


if __name__ == "__main__":
    main()
