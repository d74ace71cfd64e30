"""Checkpoint files: atomic layout, tied weights, mismatches named, nothing unpickled."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from zoo.checkpoint import Checkpointer, load_model_tensors, read_checkpoint
from zoo.errors import CheckpointError
from zoo.models.rnn import CharRNN, CharRNNConfig


def _model(**kw) -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(CharRNNConfig(hidden_size=8, num_layers=1, **kw), vocab_size=11)


def test_tied_weights_are_stored_once_and_round_trip(tmp_path):
    model = _model(tie_weights=True)
    ckpt = Checkpointer(tmp_path, keep_last=1)
    path = ckpt.save(3, model, {"x": torch.ones(1)}, {})
    tensors, state, meta = read_checkpoint(path)
    assert "lm_head.weight" not in tensors and meta["aliases"] == {"lm_head.weight": "embedding.weight"}
    fresh = _model(tie_weights=True)
    torch.nn.init.zeros_(fresh.embedding.weight)
    load_model_tensors(fresh, tensors, meta["aliases"], str(path))
    assert torch.equal(fresh.lm_head.weight, model.lm_head.weight)
    assert fresh.lm_head.weight is fresh.embedding.weight


def test_mismatched_architecture_names_the_tensors(tmp_path):
    path = Checkpointer(tmp_path).save(1, _model(), {}, {})
    tensors, _, meta = read_checkpoint(path)
    gru = CharRNN(CharRNNConfig(cell="gru", hidden_size=8, num_layers=2), vocab_size=11)
    with pytest.raises(CheckpointError) as err:
        load_model_tensors(gru, tensors, meta["aliases"], str(path))
    message = str(err.value)
    assert "missing rnn.bias_hh_l1, rnn.bias_ih_l1, rnn.weight_hh_l1, rnn.weight_ih_l1" in message
    assert "rnn.weight_ih_l0 (32, 8) vs (24, 8)" in message


def test_torn_and_temporary_folders_are_ignored_and_cleaned(tmp_path):
    ckpt = Checkpointer(tmp_path, keep_last=2)
    ckpt.save(1, _model(), {}, {})
    torn = tmp_path / "ckpt" / "step-00000002"  # a folder without meta.json: zoo's saves never leave one
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"half")
    tmp = tmp_path / "ckpt" / ".tmp-step-00000003-1"
    tmp.mkdir()
    assert ckpt.latest().name == "step-00000001"
    (tmp_path / "ckpt" / "latest").write_text("step-00000002")  # a stale pointer to a torn folder
    assert ckpt.latest().name == "step-00000001"
    assert ckpt.clean_leftovers() == ["removed .tmp-step-00000003-1"]  # temp folders go (under the run's lock)
    ckpt.save(4, _model(), {}, {})
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    # the unexplained folder is never deleted; the old complete one goes only when older than keep_last allows
    assert names == ["latest", "step-00000001", "step-00000002", "step-00000004"]


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path, keep_last=1)
    ckpt.save(1, _model(), {}, {})

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(CheckpointError, match=r"step-00000002 \(\[Errno 28\] No space left on device\); the "
                       "previous checkpoint step-00000001 is intact"):
        ckpt.save(2, _model(), {}, {})
    assert ckpt.latest().name == "step-00000001"
    read_checkpoint(ckpt.latest())
    assert not (tmp_path / "ckpt" / "step-00000002").exists()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["latest", "step-00000001"]  # no temp left


def test_a_malicious_state_file_is_not_unpickled(tmp_path):
    path = Checkpointer(tmp_path).save(1, _model(), {}, {})
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(path / "state.pt", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_checkpoint(path)
    assert not marker.exists()
