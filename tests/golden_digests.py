"""Content digests of the deterministic stages' outputs (cell sentences, task tables, SFT data) of the workflow
test's run, compared with tests/golden_digests.json so a refactor that changes behaviour is caught.

After an intended change, rewrite the file from a finished run of the workflow test's config:
    python tests/golden_digests.py <workdir>   (the folder holding results/)
"""

import hashlib
import json
import sys
from pathlib import Path

import pandas as pd

GOLDEN = Path(__file__).with_suffix(".json")
STAGES = ("cell_sentences", "tasks", "sft")
VOLATILE = ("tokens_in", "tokens_out", "cached")  # teacher accounting, not content


def digests(results: Path) -> dict[str, str]:
    out = {}
    for stage in STAGES:
        for path in sorted((results / stage).rglob("*.parquet")):
            frame = pd.read_parquet(path).drop(columns=list(VOLATILE), errors="ignore")
            text = frame.to_csv(index=False, float_format="%.6g")
            out[str(path.relative_to(results))] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return out


if __name__ == "__main__":
    found = digests(Path(sys.argv[1]) / "results")
    GOLDEN.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(found)} digests to {GOLDEN}")
