"""Experiment configuration: YAML files in configs/ plus ``key=value`` overrides from the command line.

Every entry point calls :func:`load_config` (experiments) or :func:`parse_overrides` (small tools with
their own defaults). An experiment file names its parent with ``inherit:``; the chain ends at
``configs/default.yaml``, which declares every key. Overrides may only set keys that exist, with a
value of the key's type; anything else stops the run with the closest valid names, because a
silently ignored typo (``fodl=0``) costs a whole training run.
"""
from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any, Iterable

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


def coerce(key: str, old: Any, raw: str) -> Any:
    """Parse ``raw`` as YAML and check it against the type of the default ``old``."""
    if isinstance(old, str):
        return raw  # a string key takes the text as written, even if it looks like a number
    new = _parse_value(raw)
    if old is None or new is None:
        return new
    if isinstance(old, bool):
        if isinstance(new, bool):
            return new
    elif isinstance(old, int):
        if isinstance(new, int) and not isinstance(new, bool):
            return new
    elif isinstance(old, float):
        if isinstance(new, (int, float)) and not isinstance(new, bool):
            return float(new)
    elif isinstance(old, list):
        if isinstance(new, list):
            return new
    elif isinstance(old, dict):
        raise ConfigError(f"'{key}' is a section; set one of its keys instead ({', '.join(f'{key}.{k}' for k in old)})")
    raise ConfigError(f"'{key}' expects {_type_name(old)} (default {old!r}), got {raw!r} ({_type_name(new)})")


def split_args(argv: Iterable[str]) -> list[tuple[str, str]]:
    pairs = []
    for arg in argv:
        if "=" not in arg or arg.startswith("="):
            raise ConfigError(f"argument {arg!r} is not key=value (example: fold=0 epochs=2)")
        key, raw = arg.split("=", 1)
        pairs.append((key.strip().lstrip("-"), raw))
    return pairs


def apply_overrides(base: dict, pairs: Iterable[tuple[str, str]], where: str = "configs/default.yaml") -> dict:
    """Return a copy of ``base`` with each dotted key set, refusing unknown keys and wrong types."""
    result = yaml.safe_load(yaml.safe_dump(base))  # deep copy, plain types only
    valid = _flat_keys(result)
    for key, raw in pairs:
        if key not in valid:
            hint = closest_keys(key, valid)
            extra = f"; did you mean {' or '.join(hint)}?" if hint else ""
            raise ConfigError(f"unknown config key '{key}'{extra} (valid keys: {where})")
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = coerce(key, node[leaf], raw)
        valid = _flat_keys(result)
    return result


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data


def _merge_checked(base: dict, child: dict, source: Path, prefix: str = "") -> dict:
    """Merge ``child`` into ``base``; an experiment file may not invent keys the defaults lack."""
    merged = dict(base)
    for key, value in child.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            hint = closest_keys(dotted, _flat_keys(base, prefix))
            extra = f"; did you mean {' or '.join(hint)}?" if hint else ""
            raise ConfigError(f"{source}: unknown key '{dotted}'{extra} (declare it in configs/default.yaml)")
        if isinstance(base[key], dict) and isinstance(value, dict):
            merged[key] = _merge_checked(base[key], value, source, dotted + ".")
        else:
            merged[key] = value
    return merged


def experiment_names(config_dir: Path = CONFIG_DIR) -> list[str]:
    return sorted(p.stem for p in config_dir.glob("*.yaml") if p.stem not in {"default", "infer"})


def load_experiment_file(name: str, config_dir: Path = CONFIG_DIR, _seen: tuple = ()) -> dict:
    """The experiment's YAML merged onto its ``inherit`` chain, ending at default.yaml."""
    path = config_dir / f"{name}.yaml"
    if not path.exists():
        names = experiment_names(config_dir)
        hint = closest_keys(name, names)
        raise ConfigError(f"no config '{name}' in {config_dir}" + (f"; did you mean {' or '.join(hint)}?" if hint else "")
                          + f" (available: {', '.join(names)})")
    if name in _seen:
        raise ConfigError(f"{path}: 'inherit' loops back to {name}")
    data = _read_yaml(path)
    if name == "default":
        return data
    parent = data.pop("inherit", "default")
    base = load_experiment_file(parent, config_dir, _seen + (name,))
    base_demo, own_demo = base.pop("on_demo", None) or {}, data.pop("on_demo", None) or {}
    merged = _merge_checked(base, data, path)
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
            name = Path(raw).stem
        else:
            rest.append((key, raw))
    data = load_experiment_file(name, config_dir)
    data["experiment"] = name
    on_demo = data.pop("on_demo", None) or {}
    resolved = apply_overrides(data, rest)
    from .paths import has_labels, is_synthetic

    # Real-data settings (512 px crops, big encoders) would take hours on the demo's 128 px studies on a
    # CPU; an experiment's `on_demo:` section scales it down whenever the demo dataset stands in, or
    # data_dir itself is a synthetic dataset.
    demo = not has_labels(resolved["data_dir"]) or is_synthetic(resolved["data_dir"])
    if demo and on_demo:
        data = _merge_checked(data, on_demo, config_dir / f"{name}.yaml (on_demo)")
        resolved = apply_overrides(data, rest)
    resolved["dataset_kind"] = "demo" if demo else "real"
    cfg = OmegaConf.create(resolved)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def parse_overrides(argv: Iterable[str] | None, defaults: dict) -> dict:
    """For small tools with their own defaults (src.score, src.report): the same checks, a plain dict back."""
    return apply_overrides(defaults, split_args(sys.argv[1:] if argv is None else argv),
                           where=", ".join(sorted(defaults)))


def save_config(cfg: DictConfig | dict, path: Path) -> None:
    from .io_utils import atomic_write_text

    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    atomic_write_text(Path(path), yaml.safe_dump(data, sort_keys=False))


def run_main(main, argv: list[str] | None = None) -> None:
    """Call ``main(argv)``, turning a ConfigError into a one-line message and exit code 2."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
