"""The data stage's typed settings: one frozen class per config section (download, preprocess, cell_sentence,
splits) whose fields are exactly the section's keys, with the schema's defaults, and that travel as plain params."""

import json
from dataclasses import FrozenInstanceError, fields

import pytest

from cellduality.config import load_schema, schema_default
from cellduality.data.download import DownloadSettings
from cellduality.data.preprocess import PreprocessSettings
from cellduality.data.sentence_table import CellSentenceSettings
from cellduality.data.splits import SplitSettings
from cellduality.errors import CellDualityError

CLASSES = (DownloadSettings, PreprocessSettings, CellSentenceSettings, SplitSettings)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.SECTION)
def test_fields_are_the_schema_section_with_its_defaults(cls):
    keys = load_schema()["properties"][cls.SECTION]["properties"]
    assert [f.name for f in fields(cls)] == list(keys)
    assert cls().params() == {k: schema_default(f"{cls.SECTION}.{k}") for k in sorted(keys)}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.SECTION)
def test_params_round_trip_as_json(cls):
    settings = cls.from_config({cls.SECTION: {}})
    params = json.loads(json.dumps(settings.params()))  # what Snakemake records and hands to the script
    assert cls.from_params(params) == settings
    with pytest.raises(FrozenInstanceError):
        setattr(settings, fields(cls)[0].name, None)


def test_from_config_reads_its_section_and_replace_checks_again():
    config = {"preprocess": {"min_genes": 3, "expression": "tpm"}, "splits": {"seed": 7}}
    assert PreprocessSettings.from_config(config) == PreprocessSettings(min_genes=3, expression="tpm")
    assert SplitSettings.from_config(config).replace(test_fraction=0.5) == SplitSettings(test_fraction=0.5, seed=7)
    with pytest.raises(CellDualityError, match="unknown preprocess setting"):
        PreprocessSettings.from_params({"min_gene": 3})


@pytest.mark.parametrize("make, message", [
    (lambda: PreprocessSettings(duplicate_genes="summ"),
     "preprocess.duplicate_genes must be one of make_unique, sum, error; got 'summ'"),
    (lambda: PreprocessSettings().replace(expression="raw"), "preprocess.expression must be one of auto, counts"),
    (lambda: PreprocessSettings.from_params({"missing_labels": "keep"}), "preprocess.missing_labels must be one of"),
    (lambda: CellSentenceSettings(top_k=0), "cell_sentence.top_k must be >= 1"),
    (lambda: CellSentenceSettings(tie_break="random"), "cell_sentence.tie_break must be one of"),
    (lambda: CellSentenceSettings(chunk_size=0), "cell_sentence.chunk_size must be >= 1"),
    (lambda: SplitSettings(test_fraction=1.5), "splits.test_fraction must be between 0 and 1; got 1.5"),
])
def test_a_bad_value_is_one_line(make, message):
    with pytest.raises(CellDualityError) as err:
        make()
    assert message in str(err.value) and "\n" not in str(err.value)
