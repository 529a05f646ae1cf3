# Shared set-up: make the library importable, load and validate the config, helpers for rules.
import os
import sys

sys.path.insert(0, os.path.join(workflow.basedir, "src"))

from cellduality.data.builtin import builtin_resource_files  # noqa: E402
from cellduality.config import load_schema, validate_config  # noqa: E402
from cellduality.errors import CellDualityError, fail  # noqa: E402

# --configfile replaces the default config (no merge, so the paper catalog never inherits the demo datasets)
if not workflow.overwrite_configfiles:
    _local = "config/config.yaml"
    _default = _local if os.path.exists(_local) else os.path.join(workflow.basedir, _local)

    configfile: _default


try:
    validate_config(
        config,
        load_schema(os.path.join(workflow.basedir, "config", "schema.yaml")),
        source="config (--configfile / config/config.yaml)",
    )
except CellDualityError as _err:
    fail(str(_err))

RESULTS = config["results_dir"]
DATASETS = config["datasets"]
LOGS = f"{RESULTS}/logs"

wildcard_constraints:
    dataset="|".join(DATASETS) or "__none__",


def dataset_params(*keys):
    """Params function: the named catalog fields of the wildcard's dataset (so edits rerun the rule)."""
    return lambda wildcards: {key: DATASETS[wildcards.dataset][key] for key in keys}
