"""``hf_egt.core.serialization``: tensors and settings round-trip through safetensors, a file not written by hf_egt is
refused, and the checkpoint checks name the file and the argument at fault without unpickling anything."""

from __future__ import annotations

import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from hf_egt.core.serialization import (
    METADATA_KEY,
    check_checkpoint_files,
    check_safetensors_files,
    check_torch_archive,
    load_tensors_with_metadata,
    save_tensors_with_metadata,
)


def test_round_trip_keeps_tensors_dtypes_and_settings(tmp_path):
    base = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    tensors = {
        "weights": base.T,  # not contiguous: saved as its values
        "ids": torch.tensor([3, 1, 2]),
        "half": torch.tensor([0.5, -1.25], dtype=torch.bfloat16),
        "trained": torch.ones(2, requires_grad=True),  # detached on the way out
    }
    settings = {"groups": ["a", 1], "objective": "minmax", "step": 0.01, "nested": {"none": None, "flag": True}}
    path = tmp_path / "state.safetensors"
    save_tensors_with_metadata(tensors, settings, path)
    loaded, metadata = load_tensors_with_metadata(path)
    assert metadata == settings
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor.detach())
    assert not loaded["trained"].requires_grad


def test_a_safetensors_file_not_written_by_hf_egt_is_refused(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"{path} was not written by hf_egt \(no '{METADATA_KEY}' metadata\)"):
        load_tensors_with_metadata(path)
    save_file({"x": torch.zeros(1)}, str(path))  # no metadata at all
    with pytest.raises(ValueError, match="not written by hf_egt"):
        load_tensors_with_metadata(path)


def test_a_pickle_is_never_loaded(tmp_path):
    """A pickle renamed to .safetensors is an error, and its payload never runs."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("pwned",))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(Exception):  # noqa: B017 - safetensors' own error type for a bad header
        load_tensors_with_metadata(path)
    with pytest.raises(ValueError, match=r"`resume_from_checkpoint`: .*evil.safetensors is unreadable or truncated"):
        check_safetensors_files(tmp_path)
    assert not marker.exists()


def test_check_safetensors_files_names_the_argument_and_the_truncated_file(tmp_path):
    save_tensors_with_metadata({"x": torch.zeros(64)}, {}, tmp_path / "a.safetensors")
    (tmp_path / "notes.txt").write_text("not a tensor file: skipped")
    check_safetensors_files(tmp_path)  # complete files pass
    data = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "b.safetensors").write_bytes(data[:20])
    with pytest.raises(ValueError, match=r"^`my_option`: .*b\.safetensors is unreadable or truncated"):
        check_safetensors_files(tmp_path, argument="my_option")


def test_check_torch_archive_accepts_torch_save_and_refuses_truncated_or_corrupt(tmp_path):
    path = tmp_path / "optimizer.pt"
    torch.save({"state": torch.arange(1000)}, path)
    check_torch_archive(path)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"^`resume_from_checkpoint`: .*cut\.pt is unreadable or truncated"):
        check_torch_archive(tmp_path / "cut.pt")
    # flip one byte inside a stored member's data: the archive opens, the member fails its CRC
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda item: item.file_size)
        offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.file_size // 2
    corrupt = bytearray(data)
    corrupt[offset] ^= 0xFF
    (tmp_path / "flipped.pt").write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match=rf"^`arg`: .*flipped\.pt is corrupt \(member {info.filename!r} fails"):
        check_torch_archive(tmp_path / "flipped.pt", argument="arg")


def test_check_checkpoint_files_walks_sub_folders_and_every_archive_suffix(tmp_path):
    (tmp_path / "sub").mkdir()
    save_tensors_with_metadata({"x": torch.zeros(4)}, {}, tmp_path / "adapter.safetensors")
    for name in ("scheduler.pt", "sub/rng_state.pth", "sub/training_args.bin", "sub/extra.pkl"):
        torch.save({"x": 1}, tmp_path / name)
    check_checkpoint_files(tmp_path)
    for name in ("sub/extra.pkl", "sub/broken.safetensors"):
        (tmp_path / name).write_bytes(b"\x00" * 7)
        with pytest.raises(ValueError, match=rf"^`resume_from_checkpoint`: .*{name.split('/')[1]}"):
            check_checkpoint_files(tmp_path)
        (tmp_path / name).unlink()
    check_checkpoint_files(tmp_path)
