import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def make_adata(X, genes=None, obs=None) -> ad.AnnData:
    X = sp.csr_matrix(X, dtype=np.float32) if not sp.issparse(X) else X
    n, g = X.shape
    genes = genes if genes is not None else [f"GENE{i}" for i in range(g)]
    obs = obs if obs is not None else pd.DataFrame({"celltype": ["T"] * n})
    obs.index = [f"cell{i}" for i in range(n)]
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))


@pytest.fixture
def counts_adata():
    rng = np.random.default_rng(0)
    X = rng.poisson(1.0, size=(40, 30)).astype(np.float32)
    X[:, 0] += 1  # every cell expresses something
    obs = pd.DataFrame({"celltype": rng.choice(["B", "T", "NK"], 40), "donor_id": ["d1"] * 20 + ["d2"] * 20})
    return make_adata(X, obs=obs)


def make_task_row(**fields):
    """A :class:`~cellduality.tasks.schema.TaskRow` with defaults for what a test does not care about."""
    from cellduality.tasks.schema import TaskRow

    defaults = dict(prompt_id="t:primal:sft:d:c1", task="annotation", direction="primal", dataset="d",
                    split="train", stage="sft")
    return TaskRow(**{**defaults, **fields})


def ci_config() -> dict:
    """The workflow tests' config: config/config.yaml with tests/ci_config.yaml deep-merged over it."""
    import yaml

    from cellduality.config import deep_merge

    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    return deep_merge(base, yaml.safe_load((ROOT / "tests" / "ci_config.yaml").read_text()))
