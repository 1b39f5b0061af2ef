#!/usr/bin/env bash
# The whole test suite: nbdev sync discipline, every notebook (slow cells included), then pytest.
# Run from anywhere; uses the project's .venv when present.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && export PATH="$PWD/.venv/bin:$PATH"
export MPLBACKEND=Agg PYTHONHASHSEED=0
# tiny test networks run fastest on one thread each (two test workers share the 2 cores)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

echo "== nbdev sync: nbdev-clean + nbdev-export must change nothing"
nbdev-clean && nbdev-export || { echo "nbdev-clean/nbdev-export failed"; exit 1; }
# unstaged edits and untracked generated files both count (a clean clone has nothing staged)
changes=$(git diff --name-only -- nbs gan_engine; git ls-files --others --exclude-standard -- nbs gan_engine)
if [ -n "$changes" ]; then
  echo "Notebooks and package are out of sync (run nbdev-export and nbdev-clean, then commit):"
  echo "$changes"; git --no-pager diff --stat -- nbs gan_engine; exit 1
fi

echo "== nbdev-test (all notebooks, flags: ${NBDEV_TEST_FLAGS:-slow})"
nbdev-test --n-workers 2 --flags "${NBDEV_TEST_FLAGS:-slow}" --timing || { echo "nbdev-test failed"; exit 1; }

echo "== docs site: python docs/build.py (every notebook executed into a page, the config reference, links checked)"
python docs/build.py --flags "${NBDEV_TEST_FLAGS:-slow}" || { echo "docs site build failed"; exit 1; }
export GAN_ENGINE_SITE_BUILT=1   # the browser test then requires _site/ and opens it in Chromium

echo "== pytest (browser test: ${GAN_ENGINE_BROWSER_TESTS:+on}${GAN_ENGINE_BROWSER_TESTS:-off; set GAN_ENGINE_BROWSER_TESTS=1 with Chromium installed})"
python -m pytest tests -p no:cacheprovider
rc=$?
if [ $rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi
exit $rc
