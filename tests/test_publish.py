"""push_to_hub: a trained model folder (weights + model card) is uploaded with huggingface_hub's HfApi, here to a
fake local hub (HfApi.create_repo / upload_folder replaced by copies into a folder; HF_HUB_OFFLINE=1 and no
socket may connect, so the tests never touch the network); the token never reaches the log or the terminal."""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from cellduality.cli import main
from cellduality.errors import CellDualityError
from cellduality.training.publish import push_model

TOKEN = "hf_write_token_never_printed_0123456789"
ENDPOINT = "http://fake-hub.invalid"


def model_folder(root: Path, *, card: bool = True, weights: bool = True) -> Path:
    """What the sft / grpo steps leave in results/models/<variant>/rep0."""
    folder = root / "models" / "grpo_duality" / "rep0"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "tokenizer.json").write_text("{}")
    if weights:
        (folder / "model.safetensors").write_bytes(b"\x00weights")
    if card:
        (folder / "README.md").write_text("---\nlicense: other\n---\n# cellduality model\n")
        (folder / "cellduality.json").write_text('{"labels": ["B cell"]}')
    return folder


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A hub that is a folder: create_repo makes <hub>/<repo_id>, upload_folder copies the files there."""
    from huggingface_hub import HfApi, constants

    hub, calls = tmp_path / "hub", []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)

    def no_network(*args, **kwargs):
        raise AssertionError("the test touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)

    def create_repo(self, repo_id, *, private=None, repo_type=None, exist_ok=False, **kwargs):
        calls.append({"call": "create_repo", "repo_id": repo_id, "private": private, "exist_ok": exist_ok,
                      "repo_type": repo_type, "token": self.token, "endpoint": self.endpoint})
        (hub / repo_id).mkdir(parents=True, exist_ok=exist_ok)
        return f"{self.endpoint}/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, repo_type=None, **kwargs):
        calls.append({"call": "upload_folder", "repo_id": repo_id, "repo_type": repo_type, "token": self.token})
        shutil.copytree(folder_path, hub / repo_id, dirs_exist_ok=True)
        return SimpleNamespace(commit_url=f"{self.endpoint}/{repo_id}/commit/0123abcd")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return SimpleNamespace(root=hub, calls=calls)


def test_model_folder_arrives_on_the_hub_privately(fake_hub, tmp_path):
    folder = model_folder(tmp_path)
    url = push_model(folder, "me/cellduality-pbmc", private=True, token_env="HF_TOKEN", endpoint=ENDPOINT)
    assert url == f"{ENDPOINT}/me/cellduality-pbmc/commit/0123abcd"
    arrived = fake_hub.root / "me" / "cellduality-pbmc"
    assert sorted(p.name for p in arrived.iterdir()) == sorted(p.name for p in folder.iterdir())
    assert (arrived / "model.safetensors").read_bytes() == b"\x00weights"
    create, upload = fake_hub.calls
    assert create["call"] == "create_repo" and create["repo_id"] == "me/cellduality-pbmc"
    assert create["private"] is True and create["exist_ok"] and create["repo_type"] == "model"
    assert create["endpoint"] == ENDPOINT and upload["repo_id"] == "me/cellduality-pbmc"
    assert create["token"] == upload["token"] == TOKEN  # from the environment, to huggingface_hub only


def test_push_model_command_keeps_the_token_out_of_log_and_terminal(fake_hub, tmp_path, capfd):
    folder, log, receipt = model_folder(tmp_path), tmp_path / "push.log", tmp_path / "hub" / "push_to_hub.json"
    settings = {"hub": {"repo_id": "me/x", "private": False, "token_env": "HF_TOKEN"}}
    files = {"folder": str(folder), "out": str(receipt), "endpoint": ENDPOINT}
    main(["push-model", "--settings", json.dumps(settings), "--files", json.dumps(files), "--log", str(log)])
    out = capfd.readouterr()
    assert json.loads(receipt.read_text()) == {"folder": str(folder), "repo_id": "me/x", "private": False,
                                               "commit_url": f"{ENDPOINT}/me/x/commit/0123abcd"}
    assert fake_hub.calls[0]["private"] is False
    assert "uploaded" in log.read_text() and "me/x" in log.read_text()
    assert TOKEN not in log.read_text() + out.out + out.err + receipt.read_text()


@pytest.mark.parametrize(("card", "weights", "message"), [
    (False, True, "no README.md or cellduality.json (the model card)"),
    (True, False, "no model weights"),
])
def test_incomplete_model_folder_is_one_line_before_any_upload(fake_hub, tmp_path, card, weights, message):
    folder = model_folder(tmp_path, card=card, weights=weights)
    with pytest.raises(CellDualityError, match=re.escape(message)) as err:
        push_model(folder, "me/x", private=True, token_env="HF_TOKEN")
    assert "\n" not in str(err.value) and not fake_hub.calls


def test_missing_repo_id_or_token_is_one_line(fake_hub, tmp_path, monkeypatch):
    folder = model_folder(tmp_path)
    with pytest.raises(CellDualityError, match="hub.repo_id is not set"):
        push_model(folder, None, private=True, token_env="HF_TOKEN")
    monkeypatch.delenv("MY_HF_WRITE_TOKEN", raising=False)
    with pytest.raises(CellDualityError, match=r"hub.token_env: \$MY_HF_WRITE_TOKEN is empty"):
        push_model(folder, "me/x", private=True, token_env="MY_HF_WRITE_TOKEN")
    assert not fake_hub.calls


def test_offline_hub_is_one_line(tmp_path, monkeypatch):
    """The real HfApi with HF_HUB_OFFLINE=1: it refuses before any request (and no socket may connect)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: pytest.fail("the test touched the network"))
    with pytest.raises(CellDualityError, match="HF_HUB_OFFLINE is set") as err:
        push_model(model_folder(tmp_path), "me/x", private=True, token_env="HF_TOKEN", endpoint=ENDPOINT)
    assert TOKEN not in str(err.value)
