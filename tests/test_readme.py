"README.md is the home page notebook's prose (nbdev's `readme_nb`): the two cannot drift apart."
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_the_index_notebook():
    nb = json.loads((ROOT / "nbs" / "index.ipynb").read_text())
    prose = "\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown") + "\n"
    assert (ROOT / "README.md").read_text() == prose, \
        "README.md differs from nbs/index.ipynb: edit the notebook, then regenerate README.md from its markdown cells"
