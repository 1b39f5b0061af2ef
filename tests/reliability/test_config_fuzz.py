"""Config fuzzing (issue 15): whole configs, override strings and YAML files either load or raise a `ConfigError`
naming the dotted key (or the file); never another exception, never a hang, and YAML tags never build Python objects.

Small by default (the file runs in well under 40 s on 2 cores); `GAN_ENGINE_RELIABILITY_FULL=1` runs ten times more
examples. `case_counts()` gives the examples each property ran, by outcome, in this process."""
import copy, math, os, signal, string, warnings
from collections import Counter
from contextlib import contextmanager

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from gan_engine.config import SCHEMA, Config, ConfigError, ConfigWarning, Key, load_config, save_config, trainer_keywords

FULL = os.environ.get("GAN_ENGINE_RELIABILITY_FULL") == "1"
HANG_S = 20   # one load_config call running longer than this counts as a hang

def fuzz(examples:int):
    "Hypothesis settings: `examples` by default, ten times as many in full mode; reproducible by default."
    return settings(max_examples=examples * 10 if FULL else examples, deadline=None, database=None,
                    derandomize=not FULL, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

CASES: Counter = Counter()   # (property, "loaded" | "refused") -> examples run

def case_counts()->dict:
    "Examples each property ran in this process, by outcome: {(property, outcome): n}."
    return dict(CASES)

class Hang(BaseException):
    "load_config ran past HANG_S (a BaseException, so no `except Exception` inside the loader can swallow it)."

@contextmanager
def time_limit(seconds:float):
    "Interrupt the block with `Hang` after `seconds` (where signals allow; elsewhere the block just runs)."
    if not hasattr(signal, "SIGALRM"): yield; return
    def interrupt(*_): raise Hang(f"load_config ran past {seconds} s")
    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try: yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)

@pytest.fixture(scope="module", autouse=True)
def imports_done():
    "Lightning and the registries import on first use (many seconds on a busy machine): done before any call is timed."
    trainer_keywords()
    load_config({"Data": {"source": "shapes"}, "Model": {"task": "prompt"}})

def names_a_key(problem:str, heads)->bool:
    "True when `problem` starts with a dotted key whose first part is one of `heads`, or names an override or the file."
    if problem.startswith(("override ", "config file ")): return True
    return any(problem.startswith(h) and problem[len(h):len(h) + 1] in (".", ":", "[", "=") for h in heads)

def load_or_refuse(prop:str, source=None, overrides=(), heads=()):
    "`load_config` must return a Config, or raise ConfigError whose every problem names its key; other exceptions fail."
    heads = {str(h) for h in heads} | set(SCHEMA)
    with warnings.catch_warnings(), time_limit(HANG_S):
        warnings.simplefilter("ignore", ConfigWarning)
        try: cfg = load_config(source, overrides)
        except ConfigError as e:
            assert e.problems and all(isinstance(p, str) for p in e.problems), e.problems
            bad = [p for p in e.problems if not names_a_key(p, heads)]
            assert not bad, f"problems that name no key: {bad}"
            str(e)   # the message renders
            CASES[prop, "refused"] += 1
            return e
    assert isinstance(cfg, Config)
    CASES[prop, "loaded"] += 1
    return cfg

# ---- values: plausible ones read from the schema, and wild ones of any type -------------------------------------
ODD_NUMBERS = [math.nan, math.inf, -math.inf, 10**400, -10**400, 2**63, -2**63 - 1, 1e308, -0.0, 5e-324]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12), st.sampled_from(ODD_NUMBERS),
                    st.just(5000).map(lambda digits: 10**digits))   # too long for str(): mapped, as hypothesis reprs constants
dict_keys = st.one_of(st.text(max_size=8), st.integers(), st.none(), st.booleans(), st.floats())
wild = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(dict_keys, inner, max_size=4)), max_leaves=10)

def plausible(spec:Key):
    "Values a user would plausibly write for `spec`: its default, its choices, numbers near its range, null."
    options = [st.just(spec.default).map(copy.deepcopy)]   # a copy: configs() fills sections in place
    if spec.choices: options += [st.sampled_from(spec.choices), st.sampled_from([str(c).upper() for c in spec.choices])]
    lo = spec.lo if spec.lo is not None else -10
    hi = spec.hi if spec.hi is not None else lo + 1000
    if spec.type == "int": options.append(st.integers(int(lo) - 1, int(hi) + 1))
    if spec.type == "float": options.append(st.floats(lo - 0.5, hi + 0.5))
    if spec.type == "bool": options.append(st.booleans())
    if spec.type in ("str", "path"):
        options += [st.text(string.ascii_lowercase + "/_.:", max_size=10), st.sampled_from(["1e-4", "2E5", ".5", "null", "yes"])]
    if spec.type == "list": options.append(st.lists(st.one_of(st.integers(-2, 5), st.floats(-1, 2)), max_size=4))
    if spec.type == "dict": options.append(st.dictionaries(st.text(max_size=6), st.floats(-1, 2), max_size=3))
    if spec.registry: options.append(st.sampled_from(["custom", "no.such.module:Thing", "bogus"]))
    if spec.nullable: options.append(st.none())
    if spec.false_ok: options.append(st.just(False))
    return st.one_of(options)

def _leaves(schema, prefix=""):
    for name, spec in schema.items():
        if isinstance(spec, dict): yield from _leaves(spec, f"{prefix}{name}.")
        else: yield f"{prefix}{name}", spec

def _sections(schema, prefix=""):
    for name, spec in schema.items():
        if isinstance(spec, dict): yield f"{prefix}{name}"; yield from _sections(spec, f"{prefix}{name}.")

LEAVES = list(_leaves(SCHEMA))
SECTIONS = list(_sections(SCHEMA)) + ["Trainer"]
# keys the loader translates: Lightning keywords gan_engine owns, and OpenSR-SRGAN keys
TRANSLATED = ["Trainer.max_steps", "Trainer.precision", "Trainer.gradient_clip_val", "Trainer.accumulate_grad_batches",
              "Trainer.default_root_dir", "Trainer.logger", "Trainer.callbacks", "Trainer.strategy", "Trainer.plugins",
              "Trainer.profiler", "Trainer.max_epochs", "Training.device", "Training.gpus", "Training.max_epochs",
              "Data.root_dir", "Data.batch_size", "Data.dataset_type", "Schedulers.metric", "Schedulers.verbose",
              "Logging.wandb.enabled", "Training.Losses.fixed_idx", "Generator.out_channels", "Callbacks.early_stopping",
              "TruncatedVGG.i"]
class_specs = st.fixed_dictionaries({"class_path": wild}, optional={"init_args": wild, "extra": wild})

def put(raw:dict, dotted:str, value):
    "Set `dotted` in nested `raw`, unless a section on the way was replaced by a non-mapping."
    *head, last = dotted.split(".")
    node = raw
    for part in head:
        node = node.setdefault(part, {})
        if not isinstance(node, dict): return
    node[last] = value

@st.composite
def configs(draw, plain:bool=False):
    "A config dict: a few schema keys (mostly plausible values), translated keys, unknown keys, wrong nesting."
    raw = {}
    for path, spec in draw(st.lists(st.sampled_from(LEAVES), max_size=6, unique_by=lambda leaf: leaf[0])):
        put(raw, path, draw(plausible(spec) if plain or draw(st.integers(0, 4)) else wild))
    if plain: return raw   # only schema keys with plausible values: most load
    for path in draw(st.lists(st.sampled_from(TRANSLATED), max_size=2)):
        put(raw, path, draw(st.one_of(wild, class_specs, st.lists(class_specs, max_size=2))))
    if not draw(st.integers(0, 3)):   # an unknown key, at the top or in a section
        where = draw(st.sampled_from([""] + SECTIONS))
        put(raw, f"{where}.{draw(st.text(max_size=8).filter(lambda k: '.' not in k))}".lstrip("."), draw(wild))
    if not draw(st.integers(0, 4)):   # a section given as something else than a mapping
        put(raw, draw(st.sampled_from(SECTIONS)), draw(wild))
    if not draw(st.integers(0, 9)):   # a non-string top-level key
        raw[draw(st.one_of(st.integers(), st.none(), st.booleans()))] = draw(wild)
    return raw

def top_keys(raw)->set: return set(raw) if isinstance(raw, dict) else set()

def file_keys(data:bytes)->set:
    "Top-level keys of a YAML file as PyYAML's SafeLoader reads them (none when it cannot)."
    try: return top_keys(yaml.safe_load(data))
    except (Exception, RecursionError): return set()

@fuzz(60)
@given(raw=configs())
def test_whole_configs_load_or_refuse_naming_the_key(raw):
    load_or_refuse("whole configs", raw, heads=top_keys(raw))

@fuzz(15)
@given(raw=st.one_of(configs(plain=True), configs()))
def test_accepted_configs_survive_a_snapshot(tmp_path_factory, raw):
    "Whatever `load_config` accepts, `save_config` writes and reads back equal."
    cfg = load_or_refuse("snapshots", raw, heads=top_keys(raw))
    if isinstance(cfg, Config):
        path = save_config(cfg, tmp_path_factory.mktemp("snap") / "config.yaml")
        assert load_or_refuse("snapshots reloaded", path) == cfg

# ---- override strings -------------------------------------------------------------------------------------------
BOMB = ("[&a [x, x, x, x, x, x, x, x, x], &b [*a, *a, *a, *a, *a, *a, *a, *a, *a], "
        "&c [*b, *b, *b, *b, *b, *b, *b, *b, *b], &d [*c, *c, *c, *c, *c, *c, *c, *c, *c], "
        "&e [*d, *d, *d, *d, *d, *d, *d, *d, *d], &f [*e, *e, *e, *e, *e, *e, *e, *e, *e], "
        "&g [*f, *f, *f, *f, *f, *f, *f, *f, *f], &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]]")
YAML_VALUES = [".nan", "-.inf", ".inf", "1e400", "-1e400", "9" * 5000, "1" + "0" * 400, "0x" + "f" * 100, "1_000", "1:30",
               "!!python/object/apply:os.system ['echo pwned']", "!!python/name:os.system", "!!python/module:os", "!foo bar",
               "!!int abc", "!!float x", "!!bool maybe", "!!timestamp nope", "2001-02-30", "!!binary '@@'", "!!set {a, b}",
               "!!omap [a: 1]", "!!str 3", "&a [*a]", "*nowhere", "{a: 1, a: 2}", "[" * 300 + "]" * 300, "{", "'open",
               "\x00", "\x1b[31m", "--- 1\n--- 2", "%YAML 1.1\n--- 3", "? [1, 2]\n: x", "{<<: {a: 1}, b: 2}", "~", "yes",
               "[1, [2, [3]]]", "{x: {y: 1}}", "{class_path: a.B, init_args: {z: .nan}}", BOMB]
segments = st.one_of(st.sampled_from(sorted({p for path, _ in LEAVES for p in path.split(".")} | {"Trainer"})),
                     st.text(max_size=5))
dotted_keys = st.one_of(st.sampled_from([path for path, _ in LEAVES] + SECTIONS + TRANSLATED),
                        st.lists(segments, max_size=4).map(".".join))
def flow_yaml(v)->str:
    "`v` as one line of flow YAML (`null` for what YAML cannot write, such as 5000-digit integers)."
    try: return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    except (ValueError, yaml.YAMLError): return "null"

yaml_values = st.one_of(st.sampled_from(YAML_VALUES), st.text(max_size=16),
                        wild.map(lambda v: flow_yaml(v)))
plausible_overrides = st.sampled_from(LEAVES).flatmap(lambda leaf: plausible(leaf[1]).map(lambda v: f"{leaf[0]}={flow_yaml(v)}"))
overrides = st.one_of(plausible_overrides, st.builds(lambda k, v: f"{k}={v}", dotted_keys, yaml_values), st.text(max_size=24))

def override_heads(items)->set:
    return {o.partition("=")[0].strip().split(".")[0] for o in items}

@fuzz(60)
@given(raw=st.one_of(st.none(), configs(plain=True), configs()), items=st.lists(overrides, min_size=1, max_size=4))
def test_overrides_load_or_refuse_naming_the_key(raw, items):
    load_or_refuse("overrides", raw, items, heads=top_keys(raw) | override_heads(items))

# ---- YAML files -------------------------------------------------------------------------------------------------
def render(tree:dict, indent:int=0)->str:
    "Block YAML from a tree whose leaves are YAML value snippets (written as they are)."
    out = []
    for k, v in tree.items():
        if isinstance(v, dict): out.append(" " * indent + f"{k}:\n" + render(v, indent + 2))
        else: out.append(" " * indent + f"{k}: {v}\n")
    return "".join(out)

@st.composite
def yaml_files(draw)->bytes:
    "YAML text: schema keys with plain or odd values, then text-level mutations (duplicates, anchors, bytes)."
    tree = {}
    for path, spec in draw(st.lists(st.sampled_from(LEAVES), max_size=6, unique_by=lambda leaf: leaf[0])):
        value = draw(st.one_of(st.sampled_from(YAML_VALUES), st.just(repr(spec.default).replace("None", "null")),
                               st.text(max_size=10)))
        put(tree, path, value.replace("\n", " "))
    lines = render(tree).splitlines(keepends=True) or ["{}\n"]
    mutation = draw(st.integers(0, 9))
    if mutation == 0: lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(lines)))   # duplicate a line
    elif mutation == 1: lines[0] = lines[0].rstrip("\n") + " &top\n"; lines.append("Bogus: *top\n")   # anchor + alias
    elif mutation == 2: lines.insert(0, draw(st.sampled_from(["%YAML 1.1\n---\n", "--- !!map\n", "---\n", "!!python/dict\n"])))
    elif mutation == 3: lines.append(draw(st.sampled_from(["...\n", "---\nOther: 1\n", "- a list\n", "<<: {Data: {}}\n"])))
    text = "".join(lines).encode()
    if mutation == 4:   # random bytes somewhere: invalid UTF-8, control characters, NUL
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.binary(min_size=1, max_size=8)) + text[at:]
    return text

@pytest.fixture(scope="module")
def yaml_dir(tmp_path_factory): return tmp_path_factory.mktemp("yaml")

@fuzz(60)
@given(data=yaml_files())
def test_yaml_files_load_or_refuse_naming_the_key_or_file(yaml_dir, data):
    path = yaml_dir / "config.yaml"
    path.write_bytes(data)
    load_or_refuse("yaml files", path, heads=file_keys(data))

# Documents every loader must refuse (or, for the last ones, read), each with a fragment its message must hold.
PWNED = "gan_engine_fuzz_pwned"
ODD_FILES = {
    "python object/apply": ("Data:\n  train_dir: !!python/object/apply:os.mkdir ['{dir}/" + PWNED + "']\n",
                            "Data.train_dir: YAML tag '!!python/object/apply:os.mkdir' is not allowed"),
    "python name": ("Model:\n  task: !!python/name:os.system\n", "Model.task: YAML tag '!!python/name:os.system' is not allowed"),
    "python at top": ("!!python/object/apply:os.system ['echo pwned']\n", "(top level): YAML tag"),
    "custom tag": ("Generator:\n  n_blocks: !foo 3\n", "Generator.n_blocks: YAML tag '!foo' is not allowed"),
    "binary tag": ("Trainer:\n  callbacks: !!binary aGk=\n", "Trainer.callbacks: YAML tag '!!binary' is not allowed"),
    "duplicate key": ("Training:\n  EMA:\n    decay: 0.9\n    decay: 0.5\n", "Training.EMA.decay: duplicate key (first at line 3)"),
    "duplicate section": ("Data: {}\nModel: {}\nData: {}\n", "Data: duplicate key"),
    "billion laughs": ("\n".join([f"l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] +
                                 [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]) + "\n",
                       "aliases expand this to more than"),
    "recursive alias": ("Trainer:\n  callbacks: &loop [*loop]\n", "Trainer.callbacks[0]: an alias refers to a collection that holds it"),
    "deep nesting": ("Trainer:\n  x: " + "[" * 1000 + "]" * 1000 + "\n", "nested deeper than"),   # past Python's stack unguarded
    "huge integer": ("Training:\n  max_steps: " + "9" * 5000 + "\n", "Training.max_steps: an integer of 5000 digits is too large"),
    "big integer": ("Training:\n  seed: " + "9" * 400 + "\n", "Training.seed: <an integer of 400 digits> is too large"),
    "huge float": ("Optimizers:\n  optim_g_lr: 1e400\n", "Optimizers.optim_g_lr: inf is not a finite number"),
    "nan": ("Training:\n  EMA:\n    decay: .nan\n", "Training.EMA.decay: nan is not a finite number"),
    "bad explicit int": ("Data:\n  scale: !!int four\n", "Data.scale: 'four' cannot be read as !!int"),
    "impossible date": ("Logging:\n  wandb:\n    project: 2001-02-30\n", "Logging.wandb.project: '2001-02-30' cannot be read as !!timestamp"),
    "invalid utf-8": (b"Data:\n  train_dir: \xff\xfe\xfa\n", "is not UTF-8 text"),
    "NUL byte": ("Data:\n  train_dir: a\x00b\n", "is not valid YAML"),
    "two documents": ("Data: {}\n---\nModel: {}\n", "is not valid YAML"),
    "undefined alias": ("Data: *nothing\n", "is not valid YAML"),
    "a list": ("- Data\n- Model\n", "must hold a mapping of sections"),
    "a scalar": ("42\n", "must hold a mapping of sections"),
    "section as list": ("Training: [1, 2]\n", "Training: [1, 2] is not a mapping of keys"),
    "empty file": ("", None),
    "unknown key with an anchor": ("base: &b {decay: 0.9}\n", "base: unknown key"),
    "merge key overridden": ("Training:\n  EMA:\n    <<: {decay: 0.9, every_n_steps: 2}\n    decay: 0.5\n", None),
}

@pytest.mark.parametrize("name", list(ODD_FILES))
def test_odd_yaml_files(name, tmp_path):
    text, fragment = ODD_FILES[name]
    path = tmp_path / "config.yaml"
    data = text if isinstance(text, bytes) else text.replace("{dir}", str(tmp_path)).encode()
    path.write_bytes(data)
    result = load_or_refuse("odd files", path, heads=file_keys(data))
    if fragment is None: assert isinstance(result, Config), result
    else:
        assert isinstance(result, ConfigError), f"{name}: loaded"
        assert fragment in str(result), str(result)
    assert not (tmp_path / PWNED).exists(), "a YAML tag ran code"

def test_merge_keys_and_overrides_work_as_plain_yaml(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(ODD_FILES["merge key overridden"][0])
    cfg = load_config(path)
    assert (cfg.Training.EMA.decay, cfg.Training.EMA.every_n_steps) == (0.5, 2)

def test_snapshot_keeps_strings_that_look_like_numbers(tmp_path):
    "`1e-4` reads as a float here, so a string '1e-4' must be quoted in the snapshot to read back as a string."
    cfg = load_config({"Logging": {"wandb": {"project": "1e-4"}}, "Schedulers": {"metric_g": "2E5"}})
    assert load_config(save_config(cfg, tmp_path / "config.yaml")) == cfg

@pytest.mark.parametrize("layer", [{}, "five", None, 1e400])
def test_opensr_truncated_vgg_layer_that_is_no_integer_is_refused(layer):
    e = load_or_refuse("opensr TruncatedVGG", {"TruncatedVGG": {"i": layer}}, heads=["TruncatedVGG"])
    assert "TruncatedVGG.i" in str(e)
