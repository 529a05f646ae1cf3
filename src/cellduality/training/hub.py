"""Fetch a Hugging Face base model once, on the machine that has the network (the submit node), into
``results/models/hub`` so that compute-node jobs read it from disk.

The token comes from the environment (``HF_TOKEN`` by default; gated models such as Llama need one) and is
only handed to ``huggingface_hub``: it is never written into the model folder, the log or a params file.
With ``HF_HUB_OFFLINE=1`` the model must already be in the local Hugging Face cache (``HF_HUB_CACHE``); that is
also how the tests run it, against a cache folder they build.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
from pathlib import Path

from cellduality.errors import CellDualityError

log = logging.getLogger(__name__)
# what loading a causal LM and its tokenizer reads; other repository files (original checkpoints, ONNX,
# GGUF exports) are skipped
MODEL_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "tokenizer*", "*.jinja")
SOURCE_FILE = "cellduality_source.json"


def is_hub_id(source: str) -> bool:
    """Whether config ``model.source`` names a hub repository (``org/name``) rather than a local folder."""
    return source != "embedded" and not os.path.exists(os.path.expanduser(source)) and source.count("/") == 1


def fetch_base_model(repo_id: str, out: str | Path, *, revision: str | None = None,
                     token_env: str = "HF_TOKEN") -> Path:
    """Download (or take from the local cache) ``repo_id`` at ``revision`` and copy it to the folder ``out``
    (complete or absent: it is assembled beside ``out`` and renamed)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    out = Path(out)
    token = os.environ.get(token_env) or None
    try:
        snapshot = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(MODEL_FILES), token=token))
    except GatedRepoError:
        raise CellDualityError(f"model.source {repo_id} is gated: accept its licence on huggingface.co and export a "
                               f"token with access as {token_env}") from None
    except RepositoryNotFoundError:
        raise CellDualityError(f"model.source {repo_id}: no such model on the hub (or it is private: export "
                               f"{token_env}); check the id or point model.source at a local folder") from None
    except RevisionNotFoundError:
        raise CellDualityError(f"model.revision {revision}: {repo_id} has no such revision") from None
    except LocalEntryNotFoundError:
        raise CellDualityError(f"model.source {repo_id}: not in the local Hugging Face cache and the hub cannot be "
                               "reached (offline?); run this step where there is network, or set model.source to "
                               "a local folder") from None
    if not any(snapshot.glob("*.safetensors")) and not any(snapshot.glob("*.bin")):
        raise CellDualityError(f"model.source {repo_id}: the repository has no safetensors weights")
    part = out.with_name(f".{out.name}.part")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    for path in sorted(snapshot.iterdir()):  # an offline snapshot is the whole cached folder: filter it here
        if path.is_file() and any(fnmatch.fnmatch(path.name, p) for p in MODEL_FILES):
            shutil.copyfile(path, part / path.name)  # the cache holds symlinks into its blobs: copy the files
    (part / SOURCE_FILE).write_text(json.dumps({"repo_id": repo_id, "revision": revision,
                                                "commit": snapshot.name}, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    part.rename(out)
    log.info("base model %s (commit %s) copied to %s", repo_id, snapshot.name, out)
    return out
