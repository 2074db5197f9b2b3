"""The command line: every user mistake is one line on stderr and a non-zero exit; --debug, --version."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from jit_ffcv.cli import main
from jit_ffcv.synthetic import SyntheticFolder, make_image_folder


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: --version, bad options
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def write_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["write", "--data-path", str(data), "--img-size", "32", "--mode", "raw", "--num-workers", "0",
            "--out", str(out), *extra]


def one_error_line(err: str) -> str:
    """The only line of ``err`` besides tqdm's progress bar (which the writer shows on stderr)."""
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and not re.search(r"\| *\d+/\d+ \[", line)]
    assert len(lines) == 1 and lines[0].startswith("jit-ffcv: error: "), err
    return lines[0]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import jit_ffcv

    assert run(["--version"], capsys)[:2] == (0, f"jit-ffcv {jit_ffcv.__version__}\n")


def test_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(write_args(tmp_path / "nope", tmp_path / "x.beton"), capsys)
    assert code == 1
    assert one_error_line(err) == (f"jit-ffcv: error: Dataset folder not found: {tmp_path / 'nope' / 'train'} "
                                   f"(expected DATA/train/<class>/<image>)")


def test_empty_class_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = make_image_folder(tmp_path / "d", num_classes=1, per_class=1, broken=False, val=False)
    (s.root / "train" / "empty").mkdir()
    code, _, err = run(write_args(s.root, tmp_path / "x.beton"), capsys)
    assert code == 1 and f"Found no valid file in {s.root / 'train' / 'empty'}" in one_error_line(err)


def test_strict_failure(synthetic: SyntheticFolder, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(write_args(synthetic.root, tmp_path / "o" / "x.beton", "--strict"), capsys)
    line = one_error_line(err)
    assert code == 1 and line.startswith("jit-ffcv: error: cannot decode ")
    assert any(f"cannot decode {path}:" in line for path in synthetic.broken)  # the first broken file in stored order
    assert os.listdir(tmp_path / "o") == []


@pytest.mark.parametrize("bad, message", [
    (["--img-size", "abc"], "argument --img-size: invalid int value: 'abc'"),
    (["--mode", "png"], "argument --mode: invalid choice: 'png'"),
])
def test_bad_option(tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: list[str], message: str) -> None:
    code, _, err = run(["write", "--data-path", str(tmp_path), "--out", str(tmp_path / "x.beton"), *bad], capsys)
    assert code == 2 and one_error_line(err).startswith(f"jit-ffcv: error: {message}")
    assert err.rstrip().endswith("(see `jit-ffcv write --help`)")


def test_img_size_is_bounded(synthetic: SyntheticFolder, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = write_args(synthetic.root, tmp_path / "x.beton")
    args[args.index("--img-size") + 1] = "100000"
    args[args.index("--mode") + 1] = "jpg"
    code, _, err = run(args, capsys)
    assert code == 1
    assert one_error_line(err) == ("jit-ffcv: error: img_size must be in [32, 4096], got 100000 "
                                   "(memory per worker grows with its square)")


def test_read_only_output(synthetic: SyntheticFolder, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() == 0:  # root writes through permissions; /sys refuses new files even to root
        folder = Path("/sys")
        if os.access(folder, os.W_OK):
            try:
                os.close(os.open(folder / "jit_ffcv_probe", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                pytest.fail("/sys is writable here: cannot simulate a read-only folder as root")
            except OSError:
                pass
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
    code, _, err = run(write_args(synthetic.root, folder / "x.beton"), capsys)
    assert code == 1 and f"{folder}" in one_error_line(err) and "choose another" in err


def test_existing_beton_needs_force(synthetic: SyntheticFolder, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.beton"
    assert run(write_args(synthetic.root, out, "--limit", "3"), capsys)[0] == 0
    before = out.read_bytes()
    code, _, err = run(write_args(synthetic.root, out, "--limit", "5"), capsys)
    assert code == 1 and one_error_line(err) == (
        f"jit-ffcv: error: {out} already exists; pass --force to overwrite it, or choose another output")
    assert out.read_bytes() == before
    assert run(write_args(synthetic.root, out, "--limit", "5", "--force"), capsys)[0] == 0
    assert run(["info", str(out)], capsys)[1].splitlines()[1] == "samples:      5 (metadata: 5)"


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from writers.folder import DatasetLayoutError

    with pytest.raises(DatasetLayoutError, match="Dataset folder not found"):
        main(write_args(tmp_path / "nope", tmp_path / "x.beton", "--debug"))
    with pytest.raises(DatasetLayoutError):
        main(["--debug", *write_args(tmp_path / "nope", tmp_path / "x.beton")])


def test_info_on_missing_beton(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["info", str(tmp_path / "gone.beton")], capsys)
    assert code == 1 and one_error_line(err) == (
        f"jit-ffcv: error: beton not found: {tmp_path / 'gone.beton'}; "
        f"write it with `jit-ffcv write` or check the path")


def test_info_on_corrupt_sidecar(raw_beton: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    beton = tmp_path / raw_beton.name
    beton.write_bytes(raw_beton.read_bytes())
    Path(f"{beton}.json").write_text('{"format": "jit-ffcv-beton/1", ')
    code, _, err = run(["info", str(beton)], capsys)
    assert code == 1 and one_error_line(err).startswith(f"jit-ffcv: error: {beton}.json is not valid JSON")


# --------------------------------------------------------------------------- #
# write: several splits, --out-dir, --dry-run
# --------------------------------------------------------------------------- #
def tree(root: Path) -> list[tuple[str, int, int]]:
    """Every path under ``root`` with its size and mtime: equal before and after means untouched."""
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_write_makes_both_splits_where_the_datamodule_looks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jit_ffcv.datamodule import JiTDataModule

    s = make_image_folder(tmp_path / "d", num_classes=2, per_class=2, broken=False)
    code, out, _ = run(["write", "--data-path", str(s.root), "--img-size", "32", "--mode", "raw", "--num-workers", "0"],
                       capsys)
    assert code == 0 and out.count("wrote ") == 2
    betons = sorted(p.name for p in (s.root / "ffcv").iterdir())
    assert betons == ["train_32_raw.beton", "train_32_raw.beton.json", "val_32_raw.beton", "val_32_raw.beton.json"]
    before = tree(s.root / "ffcv")
    dm = JiTDataModule(str(s.root), img_size=32, batch_size=2, num_workers=1, mode="raw", write_workers=0)
    dm.prepare_data()  # finds both: writes nothing
    dm.setup("fit")
    assert tree(s.root / "ffcv") == before
    assert (dm._meta["train"].num_samples, dm._meta["val"].num_samples) == (4, 1)


def test_out_dir_and_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = make_image_folder(tmp_path / "d", num_classes=2, per_class=2, broken=False)
    argv = ["write", "--data-path", str(s.root), "--img-size", "32", "--mode", "jpg", "--quality", "80",
            "--num-workers", "0", "--out-dir", str(tmp_path / "b"), "--split", "val"]
    assert run(argv, capsys)[0] == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["val_32_jpg80.beton", "val_32_jpg80.beton.json"]
    assert not (s.root / "ffcv").exists()


def test_out_with_two_splits_is_refused(synthetic: SyntheticFolder, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(write_args(synthetic.root, tmp_path / "o" / "x.beton", "--split", "train", "val"), capsys)
    assert code == 1 and one_error_line(err) == (
        "jit-ffcv: error: --out names one file but 2 splits would be written (train val); pass --split train, "
        "or --out-dir DIR for one beton per split")
    assert not (tmp_path / "o").exists()
    code, _, err = run(write_args(synthetic.root, tmp_path / "x.beton", "--out-dir", str(tmp_path)), capsys)
    assert code == 2 and one_error_line(err).startswith(
        "jit-ffcv: error: argument --out-dir: not allowed with argument --out")


def test_existing_split_is_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = make_image_folder(tmp_path / "d", num_classes=2, per_class=2, broken=False)
    argv = ["write", "--data-path", str(s.root), "--img-size", "32", "--mode", "raw", "--num-workers", "0"]
    assert run([*argv, "--split", "train"], capsys)[0] == 0
    before = tree(s.root / "ffcv")
    code, _, err = run(argv, capsys)
    train = s.root / "ffcv" / "train_32_raw.beton"
    assert code == 1 and one_error_line(err) == (
        f"jit-ffcv: error: {train} already exists; pass --force to overwrite it, or choose another "
        f"output; or pass --split val to write only the missing split")
    assert tree(s.root / "ffcv") == before  # val was not written either
    assert run([*argv, "--split", "val"], capsys)[0] == 0


def test_dry_run_counts_exactly_and_writes_nothing(synthetic: SyntheticFolder, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Synthetic train: 23 image-named files (3 broken: empty, not an image, truncated), 1 README; val: 4 files."""
    data = tmp_path / "d"
    s = make_image_folder(data)
    before = tree(data)
    argv = ["write", "--data-path", str(data), "--img-size", "64", "--mode", "raw", "--num-workers", "2", "--dry-run"]
    code, out, _ = run(argv, capsys)
    assert code == 0 and tree(data) == before
    lines = out.splitlines()
    train, val = data / "ffcv" / "train_64_raw.beton", data / "ffcv" / "val_64_raw.beton"
    assert lines[0] == f"train: 23 images in 4 classes -> {train}"
    assert lines[1:3] == ["  ignored (not an image extension): 1", "  skipped (unreadable): 3"]
    assert [line.split(": ")[0].strip() for line in lines[3:6]] == sorted(s.broken)
    reasons = [line.split(": ")[1] for line in lines[3:6]]
    assert reasons == ["OSError", "UnidentifiedImageError", "UnidentifiedImageError"]
    assert lines[6] == "  samples: 20  (exact: every file was cropped and encoded)"
    assert lines[9] == f"val: 4 images in 4 classes -> {val}"
    assert lines[10:13] == ["  ignored (not an image extension): 0", "  skipped (unreadable): 0",
                            "  samples: 4  (exact: every file was cropped and encoded)"]
    assert lines[-1] == "dry run: nothing was written"
    times = [line for line in lines if line.startswith("  write time: ")]
    assert len(times) == 2 and all("start-up (FFCV's import as timed here, the file's checksum) + " in t for t in times)
    sizes = [int(line.split()[1].replace(",", "")) for line in lines if line.startswith("  size: ")]
    assert run(argv[:-1], capsys)[0] == 0  # the real write: raw sizes are exact arithmetic
    assert sizes == [train.stat().st_size, val.stat().st_size]
    code, out, _ = run(argv, capsys)  # existing outputs are reported, not refused
    assert code == 0 and out.splitlines()[0].endswith("(exists: the write needs --force)")


def test_dry_run_estimates_from_a_sample(synthetic: SyntheticFolder, capsys: pytest.CaptureFixture[str]) -> None:
    """--sample 5 of the 21 train files that pass the header check: counts are estimates, the header check is exact."""
    argv = ["write", "--data-path", str(synthetic.root), "--img-size", "64", "--mode", "jpg", "--num-workers", "0",
            "--dry-run", "--sample", "5", "--split", "train", "--out", "/nonexistent/x.beton"]
    code, out, _ = run(argv, capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0] == "train: 23 images in 4 classes -> /nonexistent/x.beton"
    assert "estimated from 5 random files of 21 cropped and encoded" in out
    assert int(lines[2].split(": ")[1]) in (2, 3)  # empty + not-an-image, plus the truncated one if sampled
    assert not Path("/nonexistent").exists()


def test_dry_run_sample_must_be_positive(synthetic: SyntheticFolder, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(write_args(synthetic.root, tmp_path / "x.beton", "--dry-run", "--sample", "0"), capsys)
    assert code == 1 and one_error_line(err) == (
        "jit-ffcv: error: sample must be >= 1, got 0 (files cropped per split for --dry-run's estimates)")
    assert list(tmp_path.iterdir()) == []


def _no_image_may_be_read(monkeypatch: pytest.MonkeyPatch) -> None:
    import writers.beton

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an image was read before every split's layout was checked")

    monkeypatch.setattr(writers.beton, "encoded_in_order", refuse)


@pytest.mark.parametrize("breakage, message", [
    ("extra val class", "val has class folders that the train split lacks: ['n99999999']"),
    ("empty val", "Couldn't find any class folder in"),
    ("empty val class", "Found no valid file in"),
])
def test_a_bad_val_layout_fails_before_train_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch, breakage: str,
                                                         message: str) -> None:
    """Unfixed, train was written in full (9 min of ImageNet) before val's layout was checked."""
    import shutil

    s = make_image_folder(tmp_path / "d", num_classes=2, per_class=2, broken=False, val=True)
    val = s.root / "val"
    if breakage == "extra val class":
        (val / "n99999999").mkdir()
        shutil.copy(next((val / s.val_classes[0]).iterdir()), val / "n99999999" / "x.JPEG")
    elif breakage == "empty val":
        shutil.rmtree(val)
        val.mkdir()
    else:
        for f in (val / s.val_classes[0]).iterdir():
            f.unlink()
    _no_image_may_be_read(monkeypatch)
    code, _, err = run(["write", "--data-path", str(s.root), "--img-size", "32", "--mode", "raw", "--num-workers", "0"],
                       capsys)
    assert code == 1 and message in one_error_line(err)
    assert not (s.root / "ffcv").exists()  # nothing written, no output folder


def test_a_mistyped_data_path_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Unfixed, DATA/ffcv/ was created under the mistyped path before 'Dataset folder not found'."""
    from writers.beton import write_split
    from writers.folder import DatasetLayoutError

    typo = tmp_path / "imagenet-typo"
    code, _, err = run(["write", "--data-path", str(typo), "--img-size", "32"], capsys)
    assert code == 1 and f"Dataset folder not found: {typo / 'train'}" in one_error_line(err)
    with pytest.raises(DatasetLayoutError, match="Dataset folder not found"):
        write_split(typo, "train", typo / "ffcv" / "train.beton", img_size=32, mode="raw", num_workers=0)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("cpus, expected, note", [
    (8, 2, "--num-workers 64: using 2 (20 images make 2 chunk(s) of 16)"),
    (1, 1, "--num-workers 64: using 1 (the CPUs this process may use)"),
])
def test_num_workers_is_capped_at_the_cpus_and_the_work(synthetic: SyntheticFolder, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture, cpus: int, expected: int,
                                                         note: str) -> None:
    """Unfixed, --num-workers 64 started 64 processes for 20 images."""
    import logging

    import writers.cli
    from writers.metadata import read_metadata

    monkeypatch.setattr(writers.cli, "usable_cpus", lambda: cpus)
    out = tmp_path / "x.beton"
    with caplog.at_level(logging.INFO, "jit_ffcv.writer"):
        code, _, _ = run(["write", "--data-path", str(synthetic.root), "--img-size", "32", "--mode", "raw",
                          "--num-workers", "64", "--limit", "20", "--out", str(out)], capsys)
    assert code == 0 and read_metadata(out).num_workers == expected
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("--num-workers")] == [note]


def test_write_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["write", "--help"], capsys)
    text = " ".join(out.split())
    assert code == 0
    for option, default in [("crop size, 32 to 4096 (1672 in raw mode)", "256"), ("raw RGB pixels", "jpg"),
                            ("JPEG quality (jpg mode)", "90"), ("(mixes classes)", "0")]:
        assert f"{option} (default: {default})" in text


def test_show_out_that_cannot_be_created_fails_before_decoding(raw_beton: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Unfixed, /proc/x.png failed with a raw '[Errno 2]' after every sample was decoded."""
    import jit_ffcv.inspect_beton

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("samples were decoded before --out was checked")

    monkeypatch.setattr(jit_ffcv.inspect_beton, "load_samples", refuse)
    code, _, err = run(["show", str(raw_beton), "--out", "/proc/x.png"], capsys)
    assert code == 1
    assert one_error_line(err).startswith("jit-ffcv: error: --out /proc/x.png: cannot create a file in /proc (")


def test_info_says_which_bytes_per_image_it_reports(raw_beton: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["info", str(raw_beton)], capsys)
    [size] = [line for line in out.splitlines() if line.startswith("size:")]
    assert code == 0 and size.endswith("KiB/image of file, pages and tables included; `write` reports the payload "
                                       "mean, on the next line)")


def test_python_callers_are_told_force_true(synthetic: SyntheticFolder, tmp_path: Path) -> None:
    from writers.beton import write_split
    from writers.output import BetonExistsError

    out = tmp_path / "x.beton"
    out.write_bytes(b"")
    with pytest.raises(BetonExistsError, match=r"already exists; pass force=True to overwrite it"):
        write_split(synthetic.root, "train", out, img_size=32, mode="raw", num_workers=0)


def test_training_outputs_are_ignored_by_git() -> None:
    import subprocess

    from tests.helpers.procs import ROOT

    paths = ["lightning_logs/version_0/hparams.yaml", "checkpoints/last.ckpt"]
    out = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.split() == paths
