from pathlib import Path

import pytest
import yaml

from cellduality.config import check_stages, load_config, load_schema, validate_config
from cellduality.errors import CellDualityError

ROOT = Path(__file__).resolve().parents[1]


def walk(schema, path=""):
    """Yield (path, subschema) for every property in the schema."""
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}.{name}".lstrip("."), sub
        yield from walk(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}.*")
    ref = schema.get("$ref")
    if ref:
        yield from walk(load_schema()["definitions"][ref.split("/")[-1]], path)


def test_every_key_has_description_and_default():
    missing = [p for p, sub in walk(load_schema()) if "description" not in sub or
               ("default" not in sub and p != "datasets.*.source")]
    assert missing == []


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_shipped_configs_validate(name):
    path = ROOT / "config" / name
    if not path.exists():
        pytest.skip(f"{name} not present")
    config = load_config(path)
    assert config["datasets"], "a shipped config must list datasets"


def test_defaults_are_filled():
    config = validate_config({"datasets": {"d": {"source": "builtin:scanpy/pbmc68k_reduced"}}})
    assert config["cell_sentence"]["top_k"] == 32
    assert config["datasets"]["d"]["role"] == "train"
    assert config["splits"] == {"test_fraction": 0.2, "seed": 0}


@pytest.mark.parametrize(
    "config, message",
    [
        ({"cell_sentence": {"top_kk": 3}}, "unknown key 'cell_sentence.top_kk'; did you mean 'top_k'"),
        ({"cell_sentence": {"top_k": 0}}, "cell_sentence.top_k: 0 is less than the minimum"),
        ({"splits": {"test_fraction": "a lot"}}, "splits.test_fraction: 'a lot' is not of type 'number'"),
        ({"datasets": {"d": {"source": "https://example.org/x.h5ad"}}}, "datasets.d.sha256 is required"),
        ({"datasets": {"d": {"sourc": "x"}}}, "unknown key 'datasets.d.sourc'; did you mean 'source'"),
        ({"datasets": {"d": {"source": "x", "role": "holdout"}}}, "datasets.d.role: 'holdout' is not one of"),
        ({"datasets": {"bad name": {"source": "x"}}}, "datasets"),
        ({"datasets": {"d": {"source": "x", "format": "xlsx"}}}, "datasets.d.format: 'xlsx' is not one of"),
        ({"datasets": {"d": {"source": "dataset:e"}}}, "datasets.d.source reuses the download of 'e'"),
        ({"datasets": {"d": {"source": "x", "obs_table": {"source": "t.csv", "member": "*.csv"}}}},
         "datasets.d.obs_table: give either source"),
        ({"datasets": {"d": {"source": "x", "obs_table": {"source": "https://example.org/t.csv"}}}},
         "datasets.d.obs_table.sha256 is required"),
        ({"datasets": {"d": {"source": "x", "pairing": {"by": ["cell_line"]}}}}, "datasets.d.pairing.control is empty"),
        ({"datasets": {"d": {"source": "x", "pairing": {"control": ["control"]}}}}, "datasets.d.pairing needs labels.drug"),
        ({"datasets": {"d": {"source": "x", "labels": {"drug": "p", "pair_id": "q"},
                             "pairing": {"control": ["control"]}}}}, "remove labels.pair_id or the pairing"),
        ({"grpo": {"variants": ["oracle"]}}, "evaluation.variants lists grpo_duality, but grpo.variants does not"),
    ],
)
def test_config_errors_are_one_line_and_name_the_field(config, message):
    with pytest.raises(CellDualityError) as err:
        validate_config(config, source="my.yaml")
    text = str(err.value)
    assert "\n" not in text and text.startswith("my.yaml: ")
    assert message in text


def test_load_config_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(CellDualityError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cell_sentence:\n  top_k: [1,\n")
    with pytest.raises(CellDualityError, match="bad.yaml: line .* is not valid YAML"):
        load_config(bad)


def test_overrides_merge_deeply(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"cell_sentence": {"top_k": 5, "chunk_size": 7}}))
    config = load_config(path, {"cell_sentence": {"top_k": 9}})
    assert config["cell_sentence"]["top_k"] == 9 and config["cell_sentence"]["chunk_size"] == 7


def test_scgpt_embedding_needs_a_checkpoint():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["evaluation"]["embedding"] = {"method": "scgpt"}
    with pytest.raises(CellDualityError, match="scgpt_checkpoint is not set"):
        validate_config(config)


BRING_YOUR_OWN = """
preset: demo
results_dir: results/mycells
datasets:
  mycells:
    source: data/mycells.h5ad
    species: human
    labels: {cell_type: cell_type}
    metadata: {donor: donor}
tasks:
  annotation: [mycells]
  cellpuzzles: [mycells]
grpo:
  max_steps: 4
"""


def test_preset_demo_keeps_laptop_scale_and_replaces_the_catalog(tmp_path):
    from cellduality.config import minimal_config_warning

    path = tmp_path / "mine.yaml"
    path.write_text(BRING_YOUR_OWN)
    config = load_config(path)
    demo = load_config(ROOT / "config" / "config.yaml")
    assert list(config["datasets"]) == ["mycells"]  # the demo's datasets are not inherited
    assert config["tasks"] == {"annotation": ["mycells"], "generation": [], "sensitivity": [], "perturbation": [],
                               "cellpuzzles": ["mycells"]}
    assert config["grpo"]["max_steps"] == 4  # the user's value
    assert config["grpo"]["train_batch_size"] == demo["grpo"]["train_batch_size"] != 512  # the demo's
    assert config["sft"] == demo["sft"] and config["model"] == demo["model"]
    assert minimal_config_warning(yaml.safe_load(BRING_YOUR_OWN)) is None
    bare = {"datasets": {"d": {"source": "x"}}, "tasks": {"annotation": ["d"]}}
    assert "add `preset: demo`" in minimal_config_warning(bare)
    with pytest.raises(CellDualityError, match="preset"):
        validate_config({"preset": "huge"})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"results_dir": ""}, "results_dir '' would put every output at the file-system root"),
        ({"results_dir": "/"}, "results_dir '/' would put every output at the file-system root"),
        ({"tasks": {}}, "tasks lists no dataset, so there is nothing to train or evaluate"),
        ({"splits": {"test_fraction": 1.0}}, "splits.test_fraction 1.0 puts every cell in the test split"),
        ({"splits": {"test_fraction": 0}}, "splits.test_fraction 0 leaves no test cells to evaluate on"),
        ({"task_tables": {"rl_fraction": 1.0}}, "task_tables.rl_fraction 1.0 holds every train cell out for RL"),
        ({"task_tables": {"rl_fraction": 0}}, "task_tables.rl_fraction 0 leaves no RL prompts for GRPO"),
        ({"preset": "foo"}, "preset 'foo' is not one of the shipped presets: demo, paper"),
    ],
)
def test_settings_that_leave_a_stage_empty_stop_at_start(tmp_path, change, message):
    """Each stops with one line naming the key, before any job (rules/common.smk runs check_stages)."""
    config = {"preset": "demo", **change}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(CellDualityError) as err:
        check_stages(load_config(path), str(path))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_ood_dataset_is_enough_to_evaluate_without_a_test_split(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"preset": "demo", "splits": {"test_fraction": 0},
                                    "datasets": {"a": {"source": "builtin:scanpy/pbmc68k_reduced"},
                                                 "b": {"source": "builtin:scanpy/pbmc68k_reduced", "role": "ood"}},
                                    "tasks": {"annotation": ["a", "b"]}}))
    check_stages(load_config(path))  # no error
