"""Experiment configuration: YAML files in configs/ plus ``key=value`` overrides from the command line.

Every entry point calls :func:`load_config` (experiments) or :func:`parse_overrides` (small tools with
their own defaults). An experiment file names its parent with ``inherit:``; the chain ends at
``configs/default.yaml``, which declares every key but a new model's own settings section (which its
config file declares beside ``model:``, see :func:`_types`). Overrides may only set keys that exist, with a
value of the key's type; anything else stops the run with the closest valid names, because a
silently ignored typo (``fodl=0``) costs a whole training run.

Every value, whether an override, a config file's or an ``on_demo`` section's, passes :func:`check_value`
when it is read: the default's type (a list element by element), null only where the default is
null, the ranges and choices of :data:`EXPERIMENT_RULES`, and no ``${...}`` (OmegaConf would resolve
it). Names that become paths (``config=``, ``inherit:``, ``experiment``, ``prepare.splits``) are plain
names. A bad value is a one-line ConfigError naming the key, the file it came from, what it got and
what is valid, before any data is touched.
"""
from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_EXPERIMENT = "effnet_gru"


class ConfigError(ValueError):
    """A config file or override is wrong; the message says which key and what would be valid."""


def _flat_keys(node: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            out[dotted] = value
            if isinstance(value, dict):
                out.update(_flat_keys(value, dotted + "."))
    return out


def flatten(node: dict, prefix: str = "") -> dict:
    """The leaves of a nested config under dotted keys: {"cnn3d": {"shape": [..]}} -> {"cnn3d.shape": [..]}.

    Used where configs are compared or logged key by key (W&B's config table, a resumed run's settings).
    """
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def closest_keys(key: str, valid: Iterable[str], n: int = 3) -> list[str]:
    """Valid dotted keys that look most like ``key`` (whole name first, then the last component)."""
    valid = list(valid)
    found = difflib.get_close_matches(key, valid, n=n, cutoff=0.5)
    leaf = key.rsplit(".", 1)[-1]
    by_leaf = {v.rsplit(".", 1)[-1]: v for v in valid}
    for match in difflib.get_close_matches(leaf, list(by_leaf), n=n, cutoff=0.6):
        if by_leaf[match] not in found:
            found.append(by_leaf[match])
    return found[:n]


def _parse_value(text: str) -> Any:
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" as a string; a number is what anyone typing it means
            return float(text)
        except ValueError:
            pass
    return value


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# ---- what a value may be: its default's type, element by element, and a rule where one is obvious ----

PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]+")
PLAIN_NAME_TEXT = "a plain name (letters, digits, _ and -)"


@dataclass(frozen=True)
class Rule:
    """What a key's value may be beyond its type. The bounds, choices and ``plain_name`` apply to a
    scalar, or to each element of a list (``each`` replaces them for the elements when given)."""
    low: float | None = None        # value >= low
    high: float | None = None       # value <= high
    above: float | None = None      # value > above
    below: float | None = None      # value < below
    choices: tuple[str, ...] = ()
    plain_name: bool = False        # it becomes a file or folder name: no "/", no ".."
    length: int | None = None       # a list of exactly this many elements
    min_length: int = 0             # a list of at least this many elements; for text, non-empty when 1
    each: Rule | None = None
    test: Callable[[Any], str | None] | None = None  # what the value should be, when bounds cannot say
    # The type where the default does not show it: an empty list's elements, a null's, whole numbers
    # that may be fractional. A sample value of that type; its contents do not matter.
    example: Any = None

    def scalar_part(self) -> Rule:
        return Rule(low=self.low, high=self.high, above=self.above, below=self.below, choices=self.choices,
                    plain_name=self.plain_name)

    def bounds_text(self) -> str:
        parts = [f"{op} {bound:g}" for op, bound in ((">=", self.low), (">", self.above), ("<=", self.high),
                                                    ("<", self.below)) if bound is not None]
        return "a value " + " and ".join(parts) if parts else ""

    def breaks_bounds(self, value: float) -> bool:
        return ((self.low is not None and value < self.low) or (self.above is not None and value <= self.above)
                or (self.high is not None and value > self.high) or (self.below is not None and value >= self.below))


def _window_pair(pair: Any) -> str | None:
    ok = isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], (int, float)) and pair[1] > 0
    return None if ok else "a [center, width] pair with width > 0"


def _device(value: Any) -> str | None:
    ok = value in ("auto", "cpu", "cuda") or bool(re.fullmatch(r"cuda:[0-9]+", str(value)))
    return None if ok else "auto, cpu, cuda or cuda:<n>"


def _study_uids(value: Any) -> str | None:
    ok = isinstance(value, list) and all(isinstance(v, str) and re.fullmatch(r"[0-9.]+", v) for v in value)
    return None if ok else "a list of StudyInstanceUIDs (digits and dots)"


_COUNT = Rule(low=1)                 # how many of something: at least one
_COUNT0 = Rule(low=0)                # 0 means none / off / all, as default.yaml's comment says
_POSITIVE = Rule(above=0)
_NON_NEGATIVE = Rule(low=0)
_PROBABILITY = Rule(low=0, high=1)
_DROPOUT = Rule(low=0, below=1)      # 1 would drop everything
_TEXT = Rule(min_length=1)
_SHAPE = Rule(length=3, low=1)       # (slices, H, W)
_PATH_OR_NULL = Rule(example="")     # null: the documented fallback; else a path

# Rules of the keys of configs/default.yaml, checked on every file value, on_demo value and override.
# Choices written here mirror the code that reads them (tests/test_config.py compares patient_head's).
EXPERIMENT_RULES: dict[str, Rule] = {
    "data_dir": _TEXT, "folds_dir": _TEXT, "runs_dir": _TEXT, "demo.dir": _TEXT,
    "cache_dir": _PATH_OR_NULL, "localisation_table": _PATH_OR_NULL, "pretrained_path": _PATH_OR_NULL,
    "wandb.entity": _PATH_OR_NULL,
    "demo.n_train": _COUNT, "demo.n_test": _COUNT0, "demo.size": Rule(choices=("demo", "full")),
    "demo.seed": _NON_NEGATIVE, "demo.seg_fraction": _PROBABILITY,
    "prepare.size": _COUNT0, "prepare.workers": _COUNT0, "prepare.min_slices": _COUNT,
    "prepare.splits": Rule(min_length=1, plain_name=True),  # folder names under data_dir and cache_dir
    "prepare.decoder": Rule(choices=("auto", "dicomsdl", "pydicom")),
    "windows": Rule(min_length=1, each=Rule(test=_window_pair), example=[[0.0, 1.0]]),
    "n_folds": Rule(low=2), "fold": _COUNT0, "seed": _NON_NEGATIVE,  # fold < n_folds: _check_folds
    "experiment": Rule(plain_name=True),  # runs/<experiment>/
    "profile": Rule(choices=("auto", "real", "demo")), "model": _TEXT,
    "tags": Rule(example=[""]),
    "epochs": _COUNT, "batch_size": _COUNT, "lr": _POSITIVE, "weight_decay": _NON_NEGATIVE,
    "warmup_epochs": _NON_NEGATIVE, "grad_clip": _NON_NEGATIVE, "ema_decay": _DROPOUT, "num_workers": _COUNT0,
    "device": Rule(test=_device), "precision": Rule(choices=("auto", "bf16", "fp32")),
    "max_steps_per_epoch": _COUNT0, "limit_studies": _COUNT0, "explain_studies": _COUNT0,
    "wandb.project": _TEXT, "wandb.mode": Rule(choices=("auto", "online", "offline", "disabled")),
    "cnn3d.shape": _SHAPE, "cnn3d.widths": Rule(min_length=1, low=1), "cnn3d.blocks": _COUNT,
    "cnn3d.dropout": _DROPOUT, "cnn3d.aug_flip_lr": _PROBABILITY, "cnn3d.aug_hu_scale": _NON_NEGATIVE,
    "cnn3d.aug_hu_shift": _NON_NEGATIVE,
    "localiser.shape": _SHAPE, "localiser.channels": Rule(min_length=2, low=1),  # a U-Net has two levels at least
    "localiser.res_units": _COUNT0, "localiser.dropout": _DROPOUT, "localiser.min_voxel_fraction": _PROBABILITY,
    "localiser.folds": Rule(low=0, example=[0]), "localiser.crop_prob": _PROBABILITY,
    "localiser.crop_margin": Rule(length=2, low=0), "localiser.refine_margin": _NON_NEGATIVE,
    "localiser.aug_p_affine": _PROBABILITY, "localiser.aug_scale": _NON_NEGATIVE,
    "localiser.aug_shift": _NON_NEGATIVE, "localiser.aug_rotate": _NON_NEGATIVE,
    "localiser.aug_flip_lr": _PROBABILITY, "localiser.aug_hu_scale": _NON_NEGATIVE,
    "localiser.aug_hu_shift": _NON_NEGATIVE,
    "effnet_gru.encoder": _TEXT, "effnet_gru.n_slices": _COUNT, "effnet_gru.neighbours": _COUNT0,
    "effnet_gru.crop_size": _COUNT, "effnet_gru.margin": _NON_NEGATIVE, "effnet_gru.gru_hidden": _COUNT,
    "effnet_gru.drop_rate": _DROPOUT, "effnet_gru.patient_head": Rule(choices=("noisy_or", "max", "learned")),
    "effnet_gru.neighbour_step": _COUNT, "effnet_gru.augment": _NON_NEGATIVE,
    "effnet_gru.drop_path_rate": _DROPOUT, "effnet_gru.train_unit": Rule(choices=("study", "vertebra")),
    "effnet_gru.negatives_per_positive": _NON_NEGATIVE,
    "effnet_gru.aux_loss_weight": _NON_NEGATIVE, "effnet_gru.order_jitter": _PROBABILITY,
    "effnet_gru.aux_box_share": _PROBABILITY, "effnet_gru.aux_box_seed": _COUNT0,
    "effnet_gru.mixup_prob": _PROBABILITY, "effnet_gru.mixup_alpha": _POSITIVE,
    "average_top_k": _COUNT0, "exclude_studies": Rule(min_length=0, test=_study_uids, example=[""]),
}


def _kind(template: Any) -> str:
    if isinstance(template, bool):
        return "true or false"
    if isinstance(template, int):
        return "an integer"
    if isinstance(template, float):
        return "a number"
    if isinstance(template, str):
        return "text"
    return "a list" if isinstance(template, list) else "a section"


def _refuse_interpolation(key: str, value: Any) -> None:
    """OmegaConf would resolve ``${...}`` (``${oc.env:HOME}`` reads the environment) in a value it holds,
    and takes ``???`` for "missing" (an error on first use); a value means what it says, so both are
    refused wherever they appear."""
    if isinstance(value, str) and "${" in value:
        raise ConfigError(f"'{key}' expects a value without '${{' (nothing is interpolated: write the value "
                          f"itself), got {value!r}")
    if isinstance(value, str) and value == "???":
        raise ConfigError(f"'{key}' expects a value, got '???' (OmegaConf's mark for a missing value)")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for index, item in items:
        _refuse_interpolation(f"{key}[{index!r}]" if isinstance(value, dict) else f"{key}[{index}]", item)


def _check_type(key: str, value: Any, template: Any, nullable: bool, shown: Any, default_note: str = "") -> None:
    """``value`` has the type of ``template``: a list element by element against the template's first
    element; null only when ``nullable``. A null template (and no example) takes anything, and so do
    the elements of a list of records ({run: ..} entries), which the code reading them checks."""
    if value is None:
        if nullable:
            return
    elif template is None:
        return
    elif isinstance(template, dict):
        keys = ", ".join(f"{key}.{k}" for k in template)
        raise ConfigError(f"'{key}' is a section; set one of its keys instead ({keys}), got {shown!r}")
    elif isinstance(template, list):
        if isinstance(value, list):
            if template and not isinstance(template[0], dict):
                for i, item in enumerate(value):
                    _check_type(f"{key}[{i}]", item, template[0], False, item)
            return
    elif isinstance(template, bool) and isinstance(value, bool):
        return
    elif isinstance(template, int) and not isinstance(template, bool):
        if isinstance(value, int) and not isinstance(value, bool):
            return
    elif isinstance(template, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return
    elif isinstance(template, str) and isinstance(value, str):
        return
    what = _kind(template) + (" or null" if nullable else "")
    hint = ""
    if isinstance(template, float) and isinstance(value, str) and _parse_value(value) != value:
        hint = f"; YAML reads {value} as text, write it with a dot: {float(value)!r}"
    raise ConfigError(f"'{key}' expects {what}{default_note}, got {shown!r} ({_type_name(value)}){hint}")


def _check_rule(key: str, value: Any, rule: Rule) -> None:
    if rule.test is not None:
        wanted = rule.test(value)
        if wanted:
            raise ConfigError(f"'{key}' expects {wanted}, got {value!r}")
    if isinstance(value, list):
        if rule.length is not None and len(value) != rule.length:
            raise ConfigError(f"'{key}' expects a list of {rule.length} elements, got {value!r}")
        if len(value) < rule.min_length:
            plural = "s" if rule.min_length > 1 else ""
            raise ConfigError(f"'{key}' expects a list of at least {rule.min_length} element{plural}, got {value!r}")
        inner = rule.each or rule.scalar_part()
        for i, item in enumerate(value):
            _check_rule(f"{key}[{i}]", item, inner)
        return
    wanted = ""
    if isinstance(value, str):
        if rule.min_length and not value:
            wanted = "non-empty text"
        elif rule.plain_name and not PLAIN_NAME.fullmatch(value):
            wanted = PLAIN_NAME_TEXT
        elif rule.choices and value not in rule.choices:
            wanted = "one of " + ", ".join(rule.choices)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and rule.breaks_bounds(value):
        wanted = rule.bounds_text()
    if wanted:
        raise ConfigError(f"'{key}' expects {wanted}, got {value!r}")


def check_value(key: str, value: Any, default: Any, rule: Rule | None = None, source: str = "",
                shown: Any = None) -> None:
    """Refuse ``value`` for ``key`` unless it has the type of ``default`` (or of ``rule.example``), is null
    only where ``default`` is, obeys ``rule`` and holds no ``${``. Called for every override
    (:func:`coerce`) and every value of a config file (:func:`_check_entries`); ``source`` names the file."""
    template = rule.example if rule is not None and rule.example is not None else default
    note = f" (default {default!r})" if not isinstance(default, (dict, list)) and default is not None else ""
    try:
        _refuse_interpolation(key, value)
        _check_type(key, value, template, default is None, value if shown is None else shown, note)
        if rule is not None and value is not None:
            _check_rule(key, value, rule)
    except ConfigError as err:
        if source:
            raise ConfigError(f"{source}: {err}") from None
        raise


def coerce(key: str, old: Any, raw: str, rule: Rule | None = None) -> Any:
    """Parse the override text ``raw`` as YAML and check it against the default ``old`` and ``rule``."""
    template = rule.example if rule is not None and rule.example is not None else old
    value = _parse_value(raw)
    if isinstance(template, str) and (value is not None or raw == ""):
        value = raw  # a text key takes the text as written, even if it looks like a number
    check_value(key, value, old, rule, shown=raw)
    if isinstance(template, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return value


def _check_folds(cfg: dict) -> None:
    """``fold`` and ``localiser.folds`` name folds of the split: 0..n_folds-1 (a relation no single rule sees)."""
    if not isinstance(cfg.get("n_folds"), int):
        return
    n_folds = cfg["n_folds"]
    wanted = f"a fold of n_folds={n_folds}: 0..{n_folds - 1}"
    if isinstance(cfg.get("fold"), int) and not 0 <= cfg["fold"] < n_folds:
        raise ConfigError(f"'fold' expects {wanted}, got {cfg['fold']!r}")
    localiser = cfg.get("localiser")
    for i, fold in enumerate((localiser.get("folds") or []) if isinstance(localiser, dict) else []):
        if not 0 <= fold < n_folds:
            raise ConfigError(f"'localiser.folds[{i}]' expects {wanted}, got {fold!r}")


def split_args(argv: Iterable[str]) -> list[tuple[str, str]]:
    pairs = []
    for arg in argv:
        if "=" not in arg or arg.startswith("="):
            raise ConfigError(f"argument {arg!r} is not key=value (example: fold=0 epochs=2)")
        key, raw = arg.split("=", 1)
        pairs.append((key.strip().lstrip("-"), raw))
    return pairs


def _lookup(tree: dict, dotted: str) -> Any:
    node = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def apply_overrides(base: dict, pairs: Iterable[tuple[str, str]], where: str = "configs/default.yaml",
                    types: dict | None = None, rules: dict[str, Rule] | None = None) -> dict:
    """Return a copy of ``base`` with each dotted key set, refusing unknown keys and values that
    :func:`check_value` refuses. ``types`` holds the defaults the types come from (default: ``base``):
    an experiment's null-by-default key stays nullable though its file sets it."""
    result = yaml.safe_load(yaml.safe_dump(base))  # deep copy, plain types only
    types = yaml.safe_load(yaml.safe_dump(base if types is None else types))
    rules = rules or {}
    valid = _flat_keys(types)
    for key, raw in pairs:
        if key not in valid:
            hint = closest_keys(key, valid)
            extra = f"; did you mean {' or '.join(hint)}?" if hint else ""
            raise ConfigError(f"unknown config key '{key}'{extra} (valid keys: {where})")
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = coerce(key, _lookup(types, key), raw, rules.get(key))
    return result


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data


def _check_entries(types: dict, entries: dict, source: str, prefix: str = "") -> None:
    """Every key of ``entries`` (a config file's, or its on_demo section's) is declared in ``types``
    (default.yaml) and its value passes :func:`check_value`: a bad edit stops the load, naming the file."""
    for key, value in entries.items():
        dotted = f"{prefix}{key}"
        if key not in types:
            hint = closest_keys(dotted, _flat_keys(types, prefix))
            extra = f"; did you mean {' or '.join(hint)}?" if hint else ""
            raise ConfigError(f"{source}: unknown key '{dotted}'{extra} (declare it in configs/default.yaml)")
        if isinstance(types[key], dict) and isinstance(value, dict):
            _check_entries(types[key], value, source, dotted + ".")
        else:
            check_value(dotted, value, types[key], EXPERIMENT_RULES.get(dotted), source)


def experiment_names(config_dir: Path = CONFIG_DIR) -> list[str]:
    return sorted(p.stem for p in config_dir.glob("*.yaml") if p.stem not in {"default", "infer"})


def _experiment_path(name: Any, config_dir: Path, key: str = "config", source: str = "") -> Path:
    """configs/<name>.yaml; ``name`` must be a plain name (``config=../x`` would read any file)."""
    if not isinstance(name, str) or not PLAIN_NAME.fullmatch(name):
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}'{key}' expects {PLAIN_NAME_TEXT}, the name of a file in {config_dir} "
                          f"without .yaml ({', '.join(experiment_names(config_dir))}), got {name!r}")
    path = config_dir / f"{name}.yaml"
    if not path.exists():
        names = experiment_names(config_dir)
        hint = closest_keys(name, names)
        raise ConfigError(f"no config '{name}' in {config_dir}" + (f"; did you mean {' or '.join(hint)}?" if hint else "")
                          + f" (available: {', '.join(names)})")
    return path


def _types(config_dir: Path, declared_by: dict | None = None, own: dict | None = None) -> dict:
    """default.yaml's keys and values, whose types every other value must have, plus the settings
    sections that config files declared for their own models (src/models/registry.py ``settings``):
    a new model brings its section in its own config file, a top-level mapping default.yaml lacks
    named like the file's ``model`` (``model: my_crop`` beside ``my_crop:``). ``declared_by``: an
    already loaded chain, whose extra sections were accepted when its files were read; ``own``: the
    file being read, whose ``model`` section is accepted."""
    data = _read_yaml(_experiment_path("default", config_dir))
    data.pop("on_demo", None)
    for key, value in (declared_by or {}).items():
        if key not in data and key != "on_demo" and isinstance(value, dict):
            data[key] = value
    model = (own or {}).get("model")
    if isinstance(model, str) and model not in data and isinstance(own.get(model), dict):
        data[model] = own[model]
    return data


def load_experiment_file(name: str, config_dir: Path = CONFIG_DIR, _seen: tuple = ()) -> dict:
    """The experiment's YAML merged onto its ``inherit`` chain, ending at default.yaml; every value of
    every file in the chain (on_demo sections too) is checked against default.yaml here, naming its file."""
    path = _experiment_path(name, config_dir)
    if name in _seen:
        raise ConfigError(f"{path}: 'inherit' loops back to {name}")
    data = _read_yaml(path)
    own_demo = data.pop("on_demo", None) or {}
    if name == "default":
        parent, base, base_demo = None, data, {}
    else:
        parent = data.pop("inherit", "default")
        _experiment_path(parent, config_dir, key="inherit", source=str(path))
        base = load_experiment_file(parent, config_dir, _seen + (name,))
        base_demo = base.pop("on_demo", None) or {}
    types = _types(config_dir, base if parent else None, data)
    _check_entries(types, data, str(path))
    _check_entries(types, own_demo, f"{path} (on_demo)")
    merged = _deep_update(base, data) if parent else data
    if base_demo or own_demo:
        merged["on_demo"] = _deep_update(base_demo, own_demo)
    return merged


def _deep_update(base: dict, child: dict) -> dict:
    out = dict(base)
    for key, value in child.items():
        out[key] = _deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(argv: Iterable[str] | None = None, default_experiment: str = DEFAULT_EXPERIMENT,
                config_dir: Path = CONFIG_DIR) -> DictConfig:
    """Resolve ``config=NAME`` plus overrides into a read-only config whose ``experiment`` is NAME."""
    pairs = split_args(sys.argv[1:] if argv is None else argv)
    name = default_experiment
    rest = []
    for key, raw in pairs:
        if key == "config":
            name = raw
        else:
            rest.append((key, raw))
    data = load_experiment_file(name, config_dir)
    data["experiment"] = name
    on_demo = data.pop("on_demo", None) or {}
    types = _types(config_dir, declared_by=data)
    resolved = apply_overrides(data, rest, types=types, rules=EXPERIMENT_RULES)
    from .paths import has_labels, is_synthetic

    # Real-data settings (512 px crops, big encoders) would take hours on the demo's 128 px studies on a
    # CPU; an experiment's `on_demo:` section is the demo profile that scales it down. `profile=auto` picks
    # it whenever the demo dataset stands in or data_dir is a synthetic dataset; `profile=demo` asks for it
    # on any data (a small dataset of one's own), `profile=real` refuses it (the full model on the demo).
    demo_data = not has_labels(resolved["data_dir"]) or is_synthetic(resolved["data_dir"])
    requested = resolved.get("profile", "auto")
    profile = ("demo" if demo_data else "real") if requested == "auto" else requested
    if profile == "demo" and on_demo:
        resolved = apply_overrides(_deep_update(data, on_demo), rest, types=types, rules=EXPERIMENT_RULES)
    resolved["profile"] = profile
    resolved["dataset_kind"] = "demo" if demo_data else "real"  # what the data is (W&B tag); not a setting
    _check_folds(resolved)
    cfg = OmegaConf.create(resolved)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def parse_overrides(argv: Iterable[str] | None, defaults: dict, rules: dict[str, Rule] | None = None) -> dict:
    """For small tools with their own defaults (src.score, src.report, infer.py): the same checks (types
    element by element, null only where the default is null, no ``${``; ``rules`` if given), a plain dict back."""
    return apply_overrides(defaults, split_args(sys.argv[1:] if argv is None else argv),
                           where=", ".join(sorted(defaults)), rules=rules)


def save_config(cfg: DictConfig | dict, path: Path) -> None:
    from .io_utils import atomic_write_text

    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    atomic_write_text(Path(path), yaml.safe_dump(data, sort_keys=False))


def run_main(main, argv: list[str] | None = None, input_errors: tuple[type[Exception], ...] = ()) -> None:
    """Call ``main(argv)``, turning a ConfigError, or one of ``input_errors`` (an entry point's own error for
    an unusable input file, whose message names the file), into one line on stderr and exit code 2.
    Other exceptions keep their traceback: they are bugs, not bad input."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except input_errors as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
