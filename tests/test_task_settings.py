"""The task stage's typed settings: one class per config section, defaults from config/schema.yaml only,
params() / from_params() round-trips, and cross-field checks that fail in one line."""

from __future__ import annotations

from dataclasses import fields

import pytest

from cellduality.config import _frozen, schema_node
from cellduality.errors import CellDualityError
from cellduality.tasks.inpainting import InpaintingSettings, make_mask
from cellduality.tasks.registry import task_names
from cellduality.tasks.rewards import RewardSettings
from cellduality.tasks.settings import CellPuzzlesSettings, TaskSettings, TaskTableSettings

CLASSES = (TaskSettings, InpaintingSettings, CellPuzzlesSettings, TaskTableSettings, RewardSettings)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.SECTION)
def test_fields_are_the_schema_section_with_its_defaults(cls) -> None:
    section = schema_node(cls.SECTION)["properties"]
    assert [f.name for f in fields(cls)] == list(section)
    default = cls()
    assert {name: getattr(default, name) for name in section} == {k: _frozen(v["default"]) for k, v in section.items()}
    assert cls.from_config({}) == default


@pytest.mark.parametrize("settings", [
    TaskSettings(annotation=("pbmc68k",), cellpuzzles=("pbmc68k", "other")),
    InpaintingSettings(hidden_fraction=0.5, strategy="markers", markers=("CD3D", "MS4A1")),
    InpaintingSettings(strategy="markers", markers="data"),
    CellPuzzlesSettings(batch_size=4, train_rounds=3, eval_rounds=2, duals_per_cell=0),
    TaskTableSettings(seed=3, rl_fraction=0.2, max_cells_eval=10, control_values=("ctrl",)),
    RewardSettings(mode="oracle", cellpuzzles="released"),
], ids=lambda s: s.SECTION)
def test_params_round_trip(settings) -> None:
    params = settings.params()
    assert params == {k: params[k] for k in sorted(params)}
    assert type(settings).from_params(params) == settings
    assert type(settings).from_config({settings.SECTION: params}) == settings


def test_task_sections_name_registered_tasks_and_the_configured_ones() -> None:
    assert set(f.name for f in fields(TaskSettings)) <= set(task_names())
    tasks = TaskSettings.from_config({"tasks": {"sensitivity": ["gdsc"], "annotation": ["pbmc68k"]}})
    assert tasks.configured() == {"annotation": ["pbmc68k"], "sensitivity": ["gdsc"]}
    assert tasks.sensitivity == ("gdsc",) and TaskSettings().configured() == {}


@pytest.mark.parametrize("make, message", [
    (lambda: TaskTableSettings(rl_fraction=1.5), "task_tables.rl_fraction must be in [0, 1]; got 1.5"),
    (lambda: TaskTableSettings(rl_fraction=-0.1), "task_tables.rl_fraction must be in [0, 1]; got -0.1"),
    (lambda: TaskTableSettings(max_cells_rl=0), "task_tables.max_cells_rl must be at least 1 or null; got 0"),
    (lambda: CellPuzzlesSettings(batch_size=1), "cellpuzzles.batch_size must be at least 2; got 1"),
    (lambda: CellPuzzlesSettings(train_rounds=0), "cellpuzzles.train_rounds must be at least 1; got 0"),
    (lambda: CellPuzzlesSettings(eval_rounds=0), "cellpuzzles.eval_rounds must be at least 1; got 0"),
    (lambda: CellPuzzlesSettings(duals_per_cell=-1), "cellpuzzles.duals_per_cell must be 0 or more; got -1"),
    (lambda: InpaintingSettings(hidden_fraction=1.0), "inpainting.hidden_fraction must be a number in (0, 1)"),
    (lambda: InpaintingSettings(hidden_fraction=0), "inpainting.hidden_fraction must be a number in (0, 1)"),
    (lambda: InpaintingSettings(strategy="bottom"), "inpainting.strategy must be one of random, tail, top, markers"),
    (lambda: InpaintingSettings(strategy="markers"), "inpainting.strategy 'markers' needs a marker gene set"),
    (lambda: InpaintingSettings(markers="everything"), "inpainting.markers must be a list of genes, null or data"),
    (lambda: InpaintingSettings(markers="data").masker("x"), "inpainting.markers: data is learned from"),
    (lambda: RewardSettings(mode="both"), "rewards.mode must be one of duality, oracle, shuffled"),
    (lambda: TaskTableSettings.from_params({"hidden_fraction": 0.5}), "unknown task_tables setting"),
    (lambda: CellPuzzlesSettings.from_config({"cellpuzzles": {"batch_size": 1}}), "batch_size must be at least 2"),
    (lambda: TaskTableSettings().replace(rl_fraction=2), "task_tables.rl_fraction must be in"),
])
def test_bad_settings_are_one_line_errors(make, message) -> None:
    with pytest.raises(CellDualityError) as err:
        make()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_masker_salts_the_settings_masks() -> None:
    genes = [f"G{i}" for i in range(12)]
    settings = InpaintingSettings(hidden_fraction=0.5, strategy="random")
    assert settings.masker("rl").mask(genes, "p") == make_mask(genes, "p", 0.5, "random", "rl")
    assert settings.masker("rl").mask(genes, "p") != settings.masker("sft").mask(genes, "p")
    markers = InpaintingSettings(hidden_fraction=0.25, strategy="markers", markers=("g11", "G10"))
    mask = markers.masker().mask(genes, "p")  # marker genes hidden first (case-insensitive), topped up at random
    assert mask.n_hidden == 3 and {"G10", "G11"} < set(mask.hidden)


def test_puzzle_rounds_and_stage_caps() -> None:
    puzzles = CellPuzzlesSettings(train_rounds=3, eval_rounds=5)
    assert [puzzles.rounds(stage) for stage in ("sft", "rl", "eval")] == [3, 3, 5]
    tables = TaskTableSettings(max_cells_sft=1, max_cells_rl=2)
    assert [tables.max_cells(stage) for stage in ("sft", "rl", "eval")] == [1, 2, None]
