"Imports flow one way: registry/config -> data -> networks/losses -> task -> module -> callbacks/trainer -> widgets/cli."
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "gan_engine"

# every module, lowest first: a module may import only modules before it (no back edge, hence no cycle)
ORDER = ["registry", "opensr", "shapes", "config", "steps", "images", "pretrained", "captions", "masks", "degrade", "data", "checkpoint", "render", "normalise", "text", "opensr_nets", "generators",
         "discriminators", "losses", "perceptual", "ema", "tasks", "optim", "loggers", "module", "health", "callbacks", "progress", "trainer",
         "inference", "export", "opensr_import", "capture", "widgets", "cli", "testing"]


def imported(path: Path) -> set[str]:
    "The gan_engine modules a file imports, anywhere in it (functions included)."
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module: out.add(node.module.split(".")[0])
            elif node.level == 1: out.update(a.name for a in node.names)
            elif node.module and node.module.startswith("gan_engine."): out.add(node.module.split(".")[1])
            elif node.module == "gan_engine": out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("gan_engine."))
    return out


def test_every_module_has_a_place():
    modules = sorted(p.stem for p in PKG.glob("*.py") if not p.stem.startswith("_"))
    assert sorted(ORDER) == modules, f"place new modules in ORDER: {sorted(set(modules) - set(ORDER))}"


def test_imports_only_go_down():
    back = [(m, dep) for m in ORDER for dep in sorted(imported(PKG / f"{m}.py") - {"__version__"})
            if dep in ORDER and ORDER.index(dep) >= ORDER.index(m)]
    assert not back, f"imports against the flow (module, imported): {back}"


def test_the_checker_sees_imports():
    assert {"config", "data", "module", "callbacks"} <= imported(PKG / "trainer.py")
    assert imported(PKG / "registry.py") == set()        # the ground floor imports nothing of the package
