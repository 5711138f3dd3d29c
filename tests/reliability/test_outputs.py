"""Outputs never destroy inputs or earlier work, and every kept file is written atomically, never through a
symlink (issue 11, parts 1 and 2), tried from the command line as a careless user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import train_args
from .helpers import assert_refused, leftovers, md5_tree, run_inprocess


def test_predict_into_its_own_input_folder_is_refused(data, ckpt, capsys):
    before = md5_tree(data)
    code, err = run_inprocess(
        "predict",
        "--checkpoint",
        ckpt,
        "--input",
        data / "images",
        "--output",
        data / "images",
        capsys=capsys,
    )
    assert_refused(code, err, str(data / "images"), "--output", "which this command reads")
    assert md5_tree(data) == before


def test_predict_into_the_ground_truth_folder_is_refused(data, ckpt, capsys):
    before = md5_tree(data)
    code, err = run_inprocess(
        "predict", "--checkpoint", ckpt, "--input", data / "images", "--output", data / "masks", capsys=capsys
    )
    line = assert_refused(code, err, str(data / "masks"), "--output", "unetseg did not write")
    assert "--overwrite" in line
    assert md5_tree(data) == before


def test_evaluate_overlays_into_the_masks_folder_are_refused(data, ckpt, capsys):
    before = md5_tree(data)
    code, err = run_inprocess(
        "evaluate", "--checkpoint", ckpt, "--data", data, "--overlays", data / "masks", capsys=capsys
    )
    assert_refused(code, err, str(data / "masks"), "--overlays")
    assert md5_tree(data) == before
    code, err = run_inprocess(
        "evaluate",
        "--checkpoint",
        ckpt,
        "--data",
        data,
        "--out",
        data / "masks" / "case_000.png",
        capsys=capsys,
    )
    assert_refused(code, err, "case_000.png", "--out", "which this command reads")
    assert md5_tree(data) == before


def test_overlay_names_that_collide_are_found_before_any_work(data, ckpt, tmp_path, capsys):
    first = data / "images" / "case_000.png"
    shutil.copy(first, data / "images" / "case_000_overlay.png")  # its mask would be case_000's overlay
    out = tmp_path / "out"
    code, err = run_inprocess(
        "predict",
        "--checkpoint",
        ckpt,
        "--input",
        data / "images",
        "--output",
        out,
        "--overlay",
        capsys=capsys,
    )
    assert_refused(code, err, "case_000_overlay.png", "would both write")
    assert not out.exists()


def test_rerunning_predict_into_its_own_output_is_allowed_but_hand_edits_are_kept(
    data, ckpt, tmp_path, capsys
):
    out = tmp_path / "pred"
    args = ("predict", "--checkpoint", ckpt, "--input", data / "images", "--output", out)
    assert run_inprocess(*args, capsys=capsys)[0] == 0
    assert run_inprocess(*args, capsys=capsys)[0] == 0  # our own earlier outputs: replaced
    edited = out / "case_001.png"
    Image.fromarray(np.full((48, 48), 1, np.uint8)).save(edited)  # a user corrected this mask by hand
    before = md5_tree(out)
    code, err = run_inprocess(*args, capsys=capsys)
    assert_refused(code, err, str(edited), "changed since")
    assert md5_tree(out) == before
    assert run_inprocess(*args, "--overwrite", capsys=capsys)[0] == 0  # an explicit choice
    assert md5_tree(edited) != before and md5_tree(data)  # replaced now; the inputs never were


def test_a_symlink_at_an_output_is_replaced_as_a_link_never_followed(data, ckpt, tmp_path, capsys):
    out, victim = tmp_path / "pred", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious")
    os.symlink(victim, out / "case_000.png")
    args = ("predict", "--checkpoint", ckpt, "--input", data / "images", "--output", out)
    code, err = run_inprocess(*args, capsys=capsys)
    assert_refused(code, err, "case_000.png", "a link")
    assert run_inprocess(*args, "--overwrite", capsys=capsys)[0] == 0
    assert victim.read_text() == "precious"
    assert not (out / "case_000.png").is_symlink() and Image.open(out / "case_000.png").size == (48, 48)


def test_a_second_train_into_a_run_needs_resume_or_overwrite(data, tmp_path, capsys):
    run = tmp_path / "RUN"
    assert run_inprocess(*train_args(data, run), capsys=capsys)[0] == 0
    before = md5_tree(run)
    code, err = run_inprocess(*train_args(data, run), capsys=capsys)
    assert_refused(code, err, str(run), "--resume", "--overwrite")
    assert md5_tree(run) == before
    code, err = run_inprocess(*train_args(data, run, "--overwrite", "--seed", "7"), capsys=capsys)
    assert code == 0, err
    assert not (tmp_path / ".RUN.previous").exists()  # removed once the new run had its checkpoint
    assert json.loads((run / "best" / "config.json").read_text())["train"]["seed"] == 7
    assert (run / "log.txt").read_text().count("training unet") == 1  # a fresh log, not a mixed one


def test_train_never_replaces_the_recipe_it_reads(data, tmp_path, capsys):
    run = tmp_path / "RUN"
    assert run_inprocess(*train_args(data, run), capsys=capsys)[0] == 0
    recipe = run / "config.yaml"
    recipe.write_text("# my commented recipe\n" + recipe.read_text())
    before = md5_tree(run / "config.yaml")
    code, err = run_inprocess(*train_args(data, run, "--config", str(recipe), "--overwrite"), capsys=capsys)
    assert_refused(code, err, "--config", "config.yaml", "lies inside the run folder")
    assert md5_tree(run / "config.yaml") == before
    code, err = run_inprocess(
        *train_args(data, run, "--config", str(recipe), "--resume", "--epochs", "2"), capsys=capsys
    )
    assert code == 0, err
    assert md5_tree(run / "config.yaml") == before  # resumed, and the recipe is still the user's


def test_out_that_is_a_file_and_a_folder_that_is_not_a_run(data, tmp_path, capsys):
    plain = tmp_path / "notes.txt"
    plain.write_text("x")
    code, err = run_inprocess(*train_args(data, plain), capsys=capsys)
    assert_refused(code, err, str(plain), "not a folder")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.docx").write_text("x")
    code, err = run_inprocess(*train_args(data, mine, "--overwrite"), capsys=capsys)
    assert_refused(code, err, str(mine), "not a unetseg run folder")
    assert (mine / "thesis.docx").read_text() == "x"


def test_a_checkpoint_killed_before_its_state_is_never_resumed_from(data, tmp_path, capsys):
    run = tmp_path / "RUN"
    assert run_inprocess(*train_args(data, run), capsys=capsys)[0] == 0
    shutil.rmtree(run / "last")
    half = run / "last.tmp"  # what a kill while writing the first checkpoint leaves
    shutil.copytree(run / "best", half)
    code, err = run_inprocess(*train_args(data, run, "--resume"), capsys=capsys)
    assert code == 0, err
    assert "no complete checkpoint" in (run / "log.txt").read_text()
    assert (run / "last" / "state.pt").is_file() and not half.exists()


def _with_small_disk(tmp_path: Path, size: str, mode: str = "rw") -> list[str] | None:
    """A shell prefix that mounts a tiny tmpfs (or a read-only one) at ``tmp_path / 'disk'`` in a private
    mount namespace, so disk-full and read-only errors are real; None where that is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size={size} tmpfs {disk}"], capture_output=True
    )
    if probe.returncode != 0:
        return None
    ro = f" && mount -o remount,ro {disk}" if mode == "ro" else ""
    return [
        "unshare",
        "-rm",
        "sh",
        "-c",
        f'mount -t tmpfs -o size={size} tmpfs {disk}{ro} && exec "$@"',
        "sh",
    ]


@pytest.mark.parametrize("what", ["predict", "evaluate"])
def test_a_full_disk_is_one_line_and_leaves_no_partial_file(data, ckpt, tmp_path, what):
    prefix = _with_small_disk(tmp_path, "40k")
    if prefix is None or shutil.which("unshare") is None:
        pytest.skip("no private mount namespace here")
    disk = tmp_path / "disk"
    args = (
        [
            "predict",
            "--checkpoint",
            ckpt,
            "--input",
            data / "images",
            "--output",
            disk / "p",
            "--probabilities",
        ]
        if what == "predict"
        else [
            "evaluate",
            "--checkpoint",
            ckpt,
            "--data",
            data,
            "--out",
            disk / "m.json",
            "--overlays",
            disk / "o",
        ]
    )
    before = md5_tree(data)
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "unetseg", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    line = assert_refused(proc.returncode, proc.stderr, "cannot write")  # ENOSPC, or a short write
    assert str(disk) in line
    assert md5_tree(data) == before


def test_a_read_only_output_folder_is_one_line(data, ckpt, tmp_path):
    prefix = _with_small_disk(tmp_path, "1m", mode="ro")
    if prefix is None or shutil.which("unshare") is None:
        pytest.skip("no private mount namespace here")
    disk = tmp_path / "disk"
    proc = subprocess.run(
        [
            *prefix,
            sys.executable,
            "-m",
            "unetseg",
            "predict",
            "--checkpoint",
            str(ckpt),
            "--input",
            str(data / "images"),
            "--output",
            str(disk / "p"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert_refused(proc.returncode, proc.stderr, str(disk / "p"), "Read-only file system")


def test_the_atomic_writer_keeps_the_old_file_when_writing_fails(tmp_path):
    from unetseg.errors import OutputError
    from unetseg.fileio import atomic_write, write_text

    target = write_text(tmp_path / "m.json", "old")

    def broken(path: Path) -> None:
        path.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match=r"m.json: cannot write \(No space left on device\)"):
        atomic_write(target, broken)
    assert target.read_text() == "old" and leftovers(tmp_path) == []
