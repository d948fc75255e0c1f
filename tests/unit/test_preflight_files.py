"""Preflight's file checks: a .pt that is no checkpoint, an output folder that cannot
be written (real files, no stack)."""

from __future__ import annotations

import os

import pytest
import torch

from mlflow_cv_yolo.errors import InputError
from mlflow_cv_yolo.preflight import check_checkpoint, check_output_folder


def test_checkpoints_in_both_torch_formats_pass_and_random_bytes_do_not(tmp_path):
    for legacy in (False, True):
        path = tmp_path / f"legacy{legacy}.pt"
        torch.save({"model": None}, path, _use_new_zipfile_serialization=not legacy)
        check_checkpoint(path)
    noise = tmp_path / "x.pt"
    noise.write_bytes(os.urandom(1000))
    with pytest.raises(InputError, match=rf"^model '{noise}': not a PyTorch checkpoint \("):
        check_checkpoint(noise)


def test_an_output_folder_is_checked_at_the_nearest_part_that_exists(tmp_path):
    check_output_folder("--runs-dir", tmp_path / "not" / "yet")  # made later, under a writable folder
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError) as caught:
        check_output_folder("--runs-dir", tmp_path / "file" / "runs")
    assert str(caught.value) == f"--runs-dir {tmp_path / 'file' / 'runs'}: {tmp_path / 'file'} is a file, not a folder"
