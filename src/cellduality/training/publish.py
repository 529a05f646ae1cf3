"""Upload a trained model folder (weights, tokenizer, model card) to the Hugging Face Hub: the optional target
``push_to_hub`` of rules/training.smk (config ``hub.*``), ``python -m cellduality.cli push-model``.

The token comes from the environment variable ``token_env`` only (``HF_TOKEN`` by default) and is handed to
``huggingface_hub`` alone: it is never logged, printed or written into a file. Before anything is sent, the
folder must hold the model card (``README.md`` and ``cellduality.json``, written next to every trained model by
the sft step) and weights; anything missing is one line. ``endpoint`` points ``huggingface_hub`` at another hub
(a self-hosted one, or a fake one in the tests).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cellduality.errors import CellDualityError
from cellduality.training.setup import WEIGHT_FILES

log = logging.getLogger(__name__)
CARD_FILES = ("README.md", "cellduality.json")  # the model card: what the Hub shows, what annotate reads


def check_model_folder(folder: str | Path) -> Path:
    """``folder`` when it holds the model card and weights (a one-line error naming what is missing)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CellDualityError(f"hub.variant: model folder {folder} does not exist; train it first (snakemake "
                               "training) or pick another hub.variant")
    missing = [name for name in CARD_FILES if not (folder / name).is_file()]
    if missing:
        raise CellDualityError(f"{folder}: no {' or '.join(missing)} (the model card); retrain it with this workflow, "
                               "whose sft step writes the card, before pushing it to the hub")
    if not any((folder / name).is_file() for name in WEIGHT_FILES) and not any(folder.glob("model-*.safetensors")):
        raise CellDualityError(f"{folder}: no model weights ({WEIGHT_FILES[0]}); the training step did not finish, "
                               "rerun it before pushing to the hub")
    return folder


def push_model(folder: str | Path, repo_id: str | None, *, private: bool = True, token_env: str = "HF_TOKEN",
               endpoint: str | None = None) -> str:
    """Create the hub repository ``repo_id`` (``private``; an existing one keeps its visibility) and upload the
    model ``folder`` to it in one commit; returns the commit URL."""
    if not repo_id:
        raise CellDualityError("hub.repo_id is not set; name the Hugging Face repository to upload to, e.g. "
                               "--config hub='{repo_id: my-org/cellduality-pbmc}'")
    folder = check_model_folder(folder)
    token = os.environ.get(token_env)
    if not token:
        raise CellDualityError(f"hub.token_env: ${token_env} is empty; export a Hugging Face token with write access "
                               f"as {token_env} (it is read from the environment only)")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                   commit_message=f"cellduality: upload {folder.parent.name}/{folder.name}")
    except OfflineModeIsEnabled:
        raise CellDualityError("HF_HUB_OFFLINE is set: the hub cannot be reached; run push_to_hub where there is "
                               "network with HF_HUB_OFFLINE unset") from None
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].replace(token, "***")
        if status in (401, 403):
            raise CellDualityError(f"hub.repo_id {repo_id}: the token in ${token_env} may not write there "
                                   f"(HTTP {status}); use a write token of an account that owns {repo_id.split('/')[0]}"
                                   ) from None
        raise CellDualityError(f"hub.repo_id {repo_id}: upload failed ({first})") from None
    url = str(getattr(commit, "commit_url", None) or commit)
    log.info("uploaded %s to %s (%s): %s", folder, repo_id, "private" if private else "public", url)
    return url
