"""Load the workflow config, fill schema defaults and validate it with one-line errors."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
from collections.abc import Mapping
from dataclasses import Field, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import jsonschema
import yaml

from cellduality.errors import CellDualityError
from cellduality.io import SCHEMA_PATH


def _with_defaults(validator_class: type) -> type:
    """A validator class that fills ``default`` values of properties before validating them."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    default = subschema["default"]
                    instance[name] = yaml.safe_load(yaml.safe_dump(default))  # deep copy
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def _describe(error: jsonschema.ValidationError, source: str) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        if allowed and unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(allowed)}"
            field = f"{where}.{key}" if error.absolute_path else key
            return f"{source}: unknown key '{field}'; {hint}"
    description = error.schema.get("description", "") if isinstance(error.schema, dict) else ""
    hint = f" ({description.rstrip('.')})" if description else ""
    return f"{source}: {where}: {error.message}{hint}"


def validate_config(config: dict, schema: Mapping | None = None, source: str = "config") -> dict:
    """Fill defaults into ``config`` in place and validate it; raise :class:`CellDualityError`."""
    if not isinstance(config, dict):
        raise CellDualityError(f"{source}: the config must be a mapping of keys to values")
    schema = load_schema() if schema is None else schema
    errors = sorted(_Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise CellDualityError(_describe(jsonschema.exceptions.best_match(errors), source))
    _check_datasets(config, source)
    trained = set(config.get("grpo", {}).get("variants", []))
    for variant in config.get("evaluation", {}).get("variants", []):
        if variant.startswith("grpo_") and variant.removeprefix("grpo_") not in trained:
            raise CellDualityError(f"{source}: evaluation.variants lists {variant}, but grpo.variants does not train "
                                   f"{variant.removeprefix('grpo_')}; add it there or remove {variant}")
    embedding = config.get("evaluation", {}).get("embedding", {})
    if embedding.get("method") == "scgpt" and not embedding.get("scgpt_checkpoint"):
        raise CellDualityError(f"{source}: evaluation.embedding.method is scgpt but evaluation.embedding."
                               "scgpt_checkpoint is not set; point it at a local scGPT checkpoint folder")
    return config


def check_stages(config: Mapping[str, Any], source: str = "config") -> None:
    """For a config the workflow runs (after :func:`validate_config`): settings that would leave a stage without
    input, or put outputs at the file-system root, each one line before any job."""
    results = str(config.get("results_dir", "results"))
    if not results.strip() or Path(results).resolve() == Path(Path(results).resolve().anchor):
        raise CellDualityError(f"{source}: results_dir {results!r} would put every output at the file-system root; "
                               "name a folder (default: results)")
    if not any(config.get("tasks", {}).values()):
        raise CellDualityError(f"{source}: tasks lists no dataset, so there is nothing to train or evaluate; add "
                               "datasets under tasks.<task> (e.g. tasks: {annotation: [my_cells]})")
    datasets = config.get("datasets", {})
    used = {name for names in config.get("tasks", {}).values() for name in names}
    held_out = any(datasets.get(name, {}).get("role") == "ood" for name in used)
    test = config.get("splits", {}).get("test_fraction", 0.2)
    if test >= 1:
        raise CellDualityError(f"{source}: splits.test_fraction {test} puts every cell in the test split, leaving none "
                               "to train on; use a value below 1 (default 0.2)")
    if test <= 0 and not held_out:
        raise CellDualityError(f"{source}: splits.test_fraction 0 leaves no test cells to evaluate on (and no dataset "
                               "has role: ood); use a value above 0 (default 0.2)")
    rl = config.get("task_tables", {}).get("rl_fraction", 0.5)
    if rl >= 1:
        raise CellDualityError(f"{source}: task_tables.rl_fraction {rl} holds every train cell out for RL, leaving none "
                               "for SFT; use a value below 1 (default 0.5)")
    if rl <= 0 and config.get("grpo", {}).get("variants"):
        raise CellDualityError(f"{source}: task_tables.rl_fraction 0 leaves no RL prompts for GRPO (grpo.variants "
                               f"{config['grpo']['variants']}); use a value above 0, or grpo.variants: [] to skip GRPO")


def _is_url(src: str | None) -> bool:
    return bool(src) and src.startswith(("http://", "https://", "ftp://"))


def _check_datasets(config: dict, source: str) -> None:
    datasets = config.get("datasets", {})
    for task, names in config.get("tasks", {}).items():
        for name in names:
            if name not in datasets:
                raise CellDualityError(
                    f"{source}: tasks.{task} lists dataset '{name}', which is not in datasets; "
                    f"known: {', '.join(datasets) or 'none'}"
                )
    for name, ds in datasets.items():
        where = f"{source}: datasets.{name}"
        if ds["source"].startswith("dataset:"):
            origin = ds["source"].removeprefix("dataset:")
            if origin not in datasets or datasets[origin]["source"].startswith("dataset:"):
                raise CellDualityError(f"{where}.source reuses the download of '{origin}', which is not a catalog "
                                       "entry with a source of its own; name one")
        if ds.get("role") == "adapt":
            origin = ds.get("adapt_from")
            if origin not in datasets or datasets[origin].get("role", "train") != "train":
                raise CellDualityError(f"{where}.adapt_from must name a train dataset of the catalog (its cell types "
                                       f"are the labels offered); got {origin!r}")
        elif ds.get("adapt_from"):
            raise CellDualityError(f"{where}.adapt_from is only for role: adapt")
        table = ds.get("obs_table") or {}
        if table.get("source") and table.get("member"):
            raise CellDualityError(f"{where}.obs_table: give either source (a separate file) or member (a file in "
                                   "the source archive), not both")
        pairing = ds.get("pairing") or {}
        if (pairing.get("by") or pairing.get("operation")) and not pairing.get("control"):
            raise CellDualityError(f"{where}.pairing.control is empty; list the values of the perturbation column "
                                   "that mark control cells (e.g. [control, vehicle])")
        if pairing.get("control"):
            labels = ds.get("labels", {})
            if "drug" not in labels:
                raise CellDualityError(f"{where}.pairing needs labels.drug, the obs column of the perturbation")
            if {"condition", "pair_id"} & set(labels):
                raise CellDualityError(f"{where}: pairing sets condition and pair_id itself; remove labels."
                                       f"{'/'.join(sorted({'condition', 'pair_id'} & set(labels)))} or the pairing")
    if not config.get("download", {}).get("require_checksum", True):
        return
    for name, ds in datasets.items():
        for key, src, digest in (("", ds["source"], ds.get("sha256")),
                                 ("obs_table.", (ds.get("obs_table") or {}).get("source"),
                                  (ds.get("obs_table") or {}).get("sha256"))):
            if _is_url(src) and not digest:
                raise CellDualityError(
                    f"{source}: datasets.{name}.{key}sha256 is required for URL source {src}; "
                    "add the file's sha256 (sha256sum <file>) or set download.require_checksum: false"
                )


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> dict:
    """Read a YAML config file, merge ``overrides`` (deep) and validate."""
    path = Path(path)
    if not path.is_file():
        raise CellDualityError(f"config file {path} not found; pass --configfile with an existing YAML file")
    try:
        with open(path) as fh:
            config = yaml.safe_load(fh) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise CellDualityError(f"{path}:{line} is not valid YAML ({getattr(err, 'problem', err)})") from None
    if overrides:
        config = deep_merge(config, overrides)
    return validate_config(apply_preset(config, SCHEMA_PATH.resolve().parent, str(path)), source=str(path))


PRESETS = {"demo": "config.yaml", "paper": "paper.yaml"}  # config ``preset`` -> file under config/
REPLACED_BY_USER = ("datasets", "tasks")  # sections a user config replaces as a whole instead of merging


def apply_preset(config: dict, config_dir: str | Path, source: str = "config") -> dict:
    """``config`` laid over the shipped preset it names (``preset: demo | paper``): sections merge key by key,
    except :data:`REPLACED_BY_USER`, which the user's config replaces when it sets them (a user's own datasets
    never inherit the demo's). A config without ``preset`` is returned unchanged."""
    name = config.get("preset")
    if name is None:
        return config
    if name not in PRESETS:
        raise CellDualityError(f"{source}: preset {name!r} is not one of the shipped presets: {', '.join(PRESETS)}")
    if not (Path(config_dir) / PRESETS[name]).is_file():
        raise CellDualityError(f"{source}: preset {name}: {Path(config_dir) / PRESETS.get(name, '?')} not found (presets "
                               "ship with the repository's config folder)")
    with open(Path(config_dir) / PRESETS[name]) as fh:
        base = yaml.safe_load(fh) or {}
    for key in REPLACED_BY_USER:
        if key in config:
            base.pop(key, None)
    return deep_merge(base, config)


def minimal_config_warning(config: Mapping) -> str | None:
    """A warning for a config without ``preset`` that leaves training at the schema defaults, which are paper
    scale (a laptop run would take days); None otherwise. Call before defaults are filled."""
    if config.get("preset") is not None or {"sft", "grpo"} & set(config):
        return None
    return ("config sets no preset and no sft/grpo section, so training takes the schema defaults (paper scale: "
            f"SFT {schema_default('sft.epochs')} epochs, GRPO train batch {schema_default('grpo.train_batch_size')}, "
            f"{schema_default('grpo.max_steps')} steps); add `preset: demo` for laptop-scale settings or "
            "`preset: paper` to say this is meant")


def deep_merge(base: Mapping, update: Mapping) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@functools.cache
def _packaged_schema() -> dict:
    return load_schema()


def schema_node(dotted: str) -> Mapping[str, Any]:
    """The schema of config key or section ``dotted`` (e.g. ``"model.lora"``)."""
    node: Mapping[str, Any] = _packaged_schema()
    for part in dotted.split("."):
        node = node["properties"][part]
    return node


def schema_default(dotted: str) -> Any:
    """The default of config key ``dotted`` (e.g. ``"teacher.n_samples"``) as written in config/schema.yaml, the
    one place defaults are written; a fresh copy each call."""
    return copy.deepcopy(schema_node(dotted)["default"])


def _frozen(value: Any) -> Any:
    """Lists become tuples at every level (a frozen settings object holds no mutable sequence)."""
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _frozen(v) for k, v in value.items()}
    return value


def _plain(value: Any) -> Any:
    """Tuples become lists and mappings plain sorted dicts: the JSON form of a settings value."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(value[k]) for k in sorted(value, key=str)}
    return value


def setting(dotted: str, *, reruns: bool = True) -> Field:
    """A :class:`Settings` field whose default is the schema's (lists become tuples, mappings a factory).

    ``reruns=False`` marks a field that says how a job runs, not what it makes (concurrency, timeouts, where
    metrics are also sent): :meth:`Settings.rerun_params` leaves it out, so changing it reruns nothing."""
    value = _frozen(schema_default(dotted))
    metadata = {"config_key": dotted, "reruns": reruns}
    if isinstance(value, dict):
        return field(default_factory=lambda: _frozen(schema_default(dotted)), metadata=metadata)
    return field(default=value, metadata=metadata)


class Settings:
    """Base of the typed settings: one frozen dataclass per config section (``SECTION``, a dotted path such as
    ``"sft"`` or ``"model.lora"``), owned by the stage package that uses it, every field declared with
    :func:`setting` so its default and meaning live only in config/schema.yaml; cross-field checks go in
    ``__post_init__`` (a bad combination is one line when the workflow starts, before any job).

    How a section travels: rules/common.smk builds each object once with :meth:`from_config`; a rule records
    :meth:`params` (plain JSON values) as a Snakemake param, so editing a setting reruns exactly the rules that
    use it; its script or the console command rebuilds the object with :meth:`from_params`, and library entry
    points take the typed object. A section with fields that only say how a job runs (``setting(...,
    reruns=False)``) hands the whole :meth:`params` to the job in a param Snakemake does not record (a function
    of ``output``) and records :meth:`rerun_params` beside it.
    """

    SECTION: ClassVar[str] = ""

    @classmethod
    def subsections(cls) -> tuple[str, ...]:
        """Keys of the section that are sections of their own (with their own class), e.g. ``model.lora``."""
        node = schema_node(cls.SECTION)["properties"]
        return tuple(k for k, v in node.items() if "properties" in v and k not in _field_names(cls))

    @classmethod
    def from_config(cls: type[S], config: Mapping[str, Any]) -> S:
        """The section ``SECTION`` of a whole (validated) workflow config; absent keys take schema defaults."""
        node: Any = config
        for part in cls.SECTION.split("."):
            node = (node or {}).get(part, {})
        return cls.from_params({k: v for k, v in (node or {}).items() if k not in cls.subsections()})

    @classmethod
    def from_params(cls: type[S], values: Mapping[str, Any]) -> S:
        """Rebuild from :meth:`params` (or any mapping of field names; absent ones take schema defaults)."""
        names = _field_names(cls)
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise CellDualityError(f"unknown {cls.SECTION} setting(s) {unknown}; known: {sorted(names)}")
        return cls(**{k: _frozen(v) for k, v in values.items()})  # type: ignore[call-arg]

    def params(self) -> dict[str, Any]:
        """Every field as plain JSON values (sorted keys): what a rule records and a job rebuilds."""
        return {f.name: _plain(getattr(self, f.name)) for f in sorted(fields(self), key=lambda f: f.name)}  # type: ignore[arg-type]

    def rerun_params(self) -> dict[str, Any]:
        """:meth:`params` without the fields declared ``reruns=False``: what Snakemake records for reruns."""
        keep = {f.name for f in fields(self) if f.metadata.get("reruns", True)}  # type: ignore[arg-type]
        return {k: v for k, v in self.params().items() if k in keep}

    def replace(self: S, **changes: Any) -> S:
        """A copy with ``changes`` (checked again by ``__post_init__``)."""
        return dataclasses.replace(self, **{k: _frozen(v) for k, v in changes.items()})  # type: ignore[type-var]


S = TypeVar("S", bound=Settings)


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls)) if dataclasses.is_dataclass(cls) else ()
