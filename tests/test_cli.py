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


def test_existing_beton_needs_force(synthetic: SyntheticFolder, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.beton"
    assert run(write_args(synthetic.root, out, "--limit", "3"), capsys)[0] == 0
    before = out.read_bytes()
    code, _, err = run(write_args(synthetic.root, out, "--limit", "5"), capsys)
    assert code == 1 and one_error_line(err) == (
        f"jit-ffcv: error: {out} already exists; pass --force (force=True) to overwrite it, or choose another output")
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
        f"jit-ffcv: error: beton not found: {tmp_path / 'gone.beton'}; write it with `jit-ffcv write` or check the path")


def test_info_on_corrupt_sidecar(raw_beton: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    beton = tmp_path / raw_beton.name
    beton.write_bytes(raw_beton.read_bytes())
    Path(f"{beton}.json").write_text('{"format": "jit-ffcv-beton/1", ')
    code, _, err = run(["info", str(beton)], capsys)
    assert code == 1 and one_error_line(err).startswith(f"jit-ffcv: error: {beton}.json is not valid JSON")
