"""The settings spine: one typed, frozen settings class per config section, its fields exactly the section's keys
in config/schema.yaml with the schema's defaults, rebuilt unchanged from what a rule records."""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil

import pytest
from conftest import ROOT

import cellduality
from cellduality.config import Settings, _frozen, load_config, load_schema
from cellduality.errors import CellDualityError

# top-level keys that are not a settings section: the preset name, the output folder, the dataset catalog (data,
# validated by the schema and cellduality.tasks.tables.check_catalog)
NOT_SECTIONS = {"preset", "results_dir", "datasets"}


def settings_classes() -> dict[str, type[Settings]]:
    for module in pkgutil.walk_packages(cellduality.__path__, "cellduality."):
        importlib.import_module(module.name)
    found: dict[str, list[type]] = {}
    stack = list(Settings.__subclasses__())
    while stack:
        cls = stack.pop()
        stack += cls.__subclasses__()
        found.setdefault(cls.SECTION, []).append(cls)
    doubles = {section: names for section, names in found.items() if len(names) > 1}
    assert not doubles, f"a section with more than one settings class: {doubles}"
    return {section: classes[0] for section, classes in found.items()}


def schema_sections(schema: dict, prefix: str = "") -> dict[str, dict]:
    """Every config section (an object with properties), by dotted path."""
    out = {}
    for key, node in schema["properties"].items():
        if "properties" in node:
            path = f"{prefix}{key}"
            out[path] = node
            out.update(schema_sections(node, f"{path}."))
    return out


SCHEMA = load_schema(ROOT / "config" / "schema.yaml")
CLASSES = settings_classes()


def test_every_config_section_has_one_settings_class_and_no_class_lacks_a_section():
    sections = {s for s in schema_sections(SCHEMA) if s not in NOT_SECTIONS}
    assert set(SCHEMA["properties"]) - {s.split(".")[0] for s in sections} == NOT_SECTIONS
    assert sorted(sections - set(CLASSES)) == [], "sections without a settings class"
    assert sorted(set(CLASSES) - sections) == [], "settings classes without a schema section"


@pytest.mark.parametrize("section", sorted(CLASSES))
def test_fields_are_the_section_keys_with_the_schema_defaults(section):
    cls, node = CLASSES[section], schema_sections(SCHEMA)[section]
    own = {k for k, v in node["properties"].items() if "properties" not in v or k in {f.name for f in
                                                                                     dataclasses.fields(cls)}}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(fields) == own, f"{section}: fields differ from the schema keys"
    default = cls()
    for name in own:
        assert fields[name].metadata.get("config_key") == f"{section}.{name}", f"{section}.{name}: not setting()"
        assert getattr(default, name) == _frozen(node["properties"][name]["default"]), f"{section}.{name}"
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen


@pytest.mark.parametrize("config_file", ["config.yaml", "paper.yaml"])
def test_what_a_rule_records_rebuilds_the_same_object(config_file):
    config = load_config(ROOT / "config" / config_file)
    for section, cls in CLASSES.items():
        settings = cls.from_config(config)
        recorded = json.loads(json.dumps(settings.params()))  # what reaches a job: JSON
        assert cls.from_params(recorded) == settings, section
        node = config
        for part in section.split("."):
            node = node[part]
        unrenamed = {k: json.loads(json.dumps(v)) for k, v in node.items() if k not in cls.subsections()}
        assert recorded == unrenamed, section  # the config's own keys and values


def test_unknown_keys_and_bad_combinations_are_one_line():
    from cellduality.training.settings import EmbeddedModelSettings, GRPOSettings, SFTSettings

    with pytest.raises(CellDualityError, match=r"unknown sft setting\(s\) \['epoch'\]") as err:
        SFTSettings.from_params({"epoch": 3})
    assert "\n" not in str(err.value)
    with pytest.raises(CellDualityError, match="second_phase_steps"):
        SFTSettings(held_back_tasks=("cellpuzzles",))
    with pytest.raises(CellDualityError, match="multiple of num_generations"):
        GRPOSettings(num_generations=3, train_batch_size=8, mini_batch_size=8)
    with pytest.raises(CellDualityError, match="divisible by model.embedded.num_heads"):
        EmbeddedModelSettings(hidden_size=30, num_heads=4)


def test_frozen_and_replace_checks_again():
    from cellduality.training.settings import GRPOSettings

    grpo = GRPOSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        grpo.beta = 1.0  # type: ignore[misc]
    assert grpo.replicate(2).seed == grpo.seed + 2 and grpo.replace(variants=["duality"]).variants == ("duality",)
    with pytest.raises(CellDualityError, match="multiple of"):
        grpo.replace(mini_batch_size=7)


def test_fields_that_only_say_how_a_job_runs_are_not_recorded_for_reruns():
    from cellduality.teacher.runner import TeacherSettings
    from cellduality.training.settings import GRPOSettings, TrainingSettings

    teacher = TeacherSettings().rerun_params()
    assert {"provider", "model", "n_samples", "temperature", "max_tokens", "knowledge", "dual_answers"} <= set(teacher)
    assert not {"concurrency", "max_retries", "timeout_s", "cache_dir", "progress", "api_key_env"} & set(teacher)
    assert "variants" not in GRPOSettings().rerun_params() and TrainingSettings().rerun_params() == {}
