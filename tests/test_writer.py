"""The writer: ImageFolder -> beton, exact pixels, ImageFolder indices, bad input, atomicity."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from jit_ffcv.synthetic import SyntheticFolder, make_image_folder
from tests.helpers.data import SMALL, read_beton, shared_sample
from writers.beton import BadImageError, read_indices, read_payloads, replicate_beton, write_split
from writers.encode import crop_file
from writers.folder import DatasetLayoutError
from writers.metadata import BetonMismatchError, read_metadata, sidecar_path
from writers.shuffle import sample_permutation

EXTS = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}


def expected_samples(split_dir: Path, classes: list[str] | None = None) -> list[tuple[str, int]]:
    """ImageFolder's (path, index) list, recomputed independently of writers.folder."""
    classes = classes or sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    out = []
    for idx, name in enumerate(classes):
        if (split_dir / name).is_dir():
            files = sorted(p for p in (split_dir / name).rglob("*") if p.is_file() and p.suffix.lower() in EXTS)
            out += [(str(p), idx) for p in files]
    return out


def stored_samples(beton: Path, samples: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """ImageFolder (path, index) of every stored sample, through the beton's ``index`` field."""
    return [samples[i] for i in read_indices(beton).tolist()]


def shuffled_kept(samples: list[tuple[str, int]], broken: list[str], seed: int = 0) -> list[int]:
    """ImageFolder indices in the writer's stored order: its permutation, less the skipped files."""
    return [i for i in sample_permutation(len(samples), seed).tolist() if samples[i][0] not in broken]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_raw_is_bit_exact_and_labels_follow_imagefolder(synthetic: SyntheticFolder, raw_beton: Path) -> None:
    images, labels = read_beton(raw_beton)
    samples = expected_samples(synthetic.root / "train")
    assert read_indices(raw_beton).tolist() == shuffled_kept(samples, synthetic.broken)
    expected = stored_samples(raw_beton, samples)
    assert len(images) == len(expected) == 20
    assert labels.tolist() == [c for _, c in expected]
    assert sorted(expected) == [(p, c) for p, c in samples if p not in synthetic.broken]
    for img, (path, _) in zip(images, expected, strict=False):
        np.testing.assert_array_equal(img, crop_file(path, SMALL), err_msg=path)


def test_bad_files_are_reported_exactly(synthetic: SyntheticFolder, raw_beton: Path) -> None:
    meta = read_metadata(raw_beton)
    assert sorted(s["path"] for s in meta.skipped) == synthetic.broken
    assert meta.ignored == synthetic.non_images
    assert meta.num_samples == 20 and meta.class_counts == [5, 5, 5, 5]
    assert meta.classes == synthetic.classes and meta.mode == "raw" and meta.quality is None


def test_jpg_quality_floor(synthetic: SyntheticFolder, jpg_beton: Path) -> None:
    images, labels = read_beton(jpg_beton)
    expected = stored_samples(jpg_beton, expected_samples(synthetic.root / "train"))
    assert len(expected) == 20
    assert labels.tolist() == [c for _, c in expected]
    scores = [psnr(img, crop_file(path, SMALL)) for img, (path, _) in zip(images, expected, strict=False)]
    assert min(scores) > 30.0, scores
    meta = read_metadata(jpg_beton)
    assert meta.quality == 90 and meta.num_workers == 2


def test_val_keeps_train_indices(synthetic: SyntheticFolder, tmp_path: Path) -> None:
    out = tmp_path / "val.beton"
    meta = write_split(synthetic.root, "val", out, img_size=32, mode="raw", num_workers=0, progress=False)
    _, labels = read_beton(out)
    expected = stored_samples(out, expected_samples(synthetic.root / "val", classes=synthetic.classes))
    assert len(expected) == 4
    assert labels.tolist() == [c for _, c in expected]
    assert set(labels.tolist()) == {0, 2}  # val holds classes 0 and 2 only; indices are train's
    assert meta.classes == synthetic.classes and meta.class_counts == [2, 0, 2, 0]


def test_val_class_unknown_to_train_is_an_error(tmp_path: Path) -> None:
    s = make_image_folder(tmp_path, num_classes=2, per_class=1, broken=False)
    extra = s.root / "val" / "zzz_extra"
    extra.mkdir(parents=True)
    (extra / "a.png").write_bytes((s.root / "val" / s.classes[0]).glob("*").__next__().read_bytes())
    with pytest.raises(DatasetLayoutError, match="zzz_extra"):
        write_split(s.root, "val", tmp_path / "v.beton", img_size=32, mode="raw", num_workers=0, progress=False)


@pytest.mark.parametrize(
    "layout, match",
    [("missing", "Dataset folder not found"), ("no_classes", "Couldn't find any class folder"),
     ("empty_class", "Found no valid file in .*empty_class")],
)
def test_layout_errors_name_the_path(tmp_path: Path, layout: str, match: str) -> None:
    if layout != "missing":
        (tmp_path / "train").mkdir()
    if layout == "empty_class":
        make_image_folder(tmp_path, num_classes=1, per_class=1, broken=False, val=False)
        (tmp_path / "train" / "empty_class").mkdir()
        (tmp_path / "train" / "empty_class" / "notes.txt").write_text("x")
    with pytest.raises(DatasetLayoutError, match=match):
        write_split(tmp_path, "train", tmp_path / "x.beton", img_size=32, mode="raw", num_workers=0, progress=False)


def test_strict_fails_and_leaves_nothing(synthetic: SyntheticFolder, tmp_path: Path) -> None:
    out = tmp_path / "strict.beton"
    # the first broken file in stored order
    with pytest.raises(BadImageError, match=r"cannot decode .*/zz_(truncated|empty|not_an_image)"):
        write_split(synthetic.root, "train", out, img_size=32, mode="raw", num_workers=0, strict=True, progress=False)
    assert os.listdir(tmp_path) == []  # no beton, no sidecar, no partial file


@pytest.mark.parametrize(
    "kwargs, match",
    [({"img_size": 16}, "img_size"), ({"mode": "png"}, "mode"), ({"quality": 0}, "quality"),
     ({"num_workers": -1}, "num_workers")],
)
def test_bad_options_fail_before_any_work(synthetic: SyntheticFolder, tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"img_size": 32, "mode": "raw", "num_workers": 0, "progress": False} | kwargs
    with pytest.raises(ValueError, match=match):
        write_split(synthetic.root, "train", tmp_path / "x.beton", **args)
    assert not (tmp_path / "x.beton").exists()


def test_metadata_refuses_other_settings(raw_beton: Path, synthetic: SyntheticFolder) -> None:
    meta = read_metadata(raw_beton)
    meta.check_matches(img_size=SMALL, mode="raw", classes=synthetic.classes)
    with pytest.raises(BetonMismatchError, match="img_size=64 but 256"):
        meta.check_matches(img_size=256)
    with pytest.raises(BetonMismatchError, match="mode='raw' but 'jpg'"):
        meta.check_matches(mode="jpg", quality=90)
    with pytest.raises(BetonMismatchError, match="classes"):
        meta.check_matches(classes=synthetic.classes[:-1])
    assert json.loads(sidecar_path(raw_beton).read_text())["crop"] == "adm_center_crop_arr"


def test_cli_write_and_info(synthetic: SyntheticFolder, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jit_ffcv.cli import main

    out = tmp_path / "cli.beton"
    argv = ["write", "--data-path", str(synthetic.root), "--img-size", "32", "--mode", "jpg", "--quality", "95",
            "--num-workers", "1", "--limit", "7", "--out", str(out)]
    assert main(argv) == 0
    assert "wrote 6 images" in capsys.readouterr().out  # 7 files, one of them truncated
    assert main(["info", str(out), "--verify"]) == 0
    text = capsys.readouterr().out
    assert "samples:      6 (metadata: 6)" in text and "(verified)" in text and "zz_truncated" in text


def test_real_imagenet_sample(tmp_path: Path) -> None:
    root = shared_sample()
    expected = expected_samples(root / "train")
    assert len(expected) == 300
    raw = tmp_path / "raw.beton"
    jpg = tmp_path / "jpg.beton"
    write_split(root, "train", raw, img_size=256, mode="raw", num_workers=2, progress=False)
    write_split(root, "train", jpg, img_size=256, mode="jpg", quality=90, num_workers=2, progress=False)
    raw_images, raw_labels = read_beton(raw)
    jpg_images, jpg_labels = read_beton(jpg)
    indices = read_indices(raw).tolist()
    assert indices == read_indices(jpg).tolist() == sample_permutation(300, 0).tolist()
    assert raw_labels.tolist() == jpg_labels.tolist() == [expected[i][1] for i in indices] == indices
    scores = []
    for i, (path, _) in enumerate(stored_samples(raw, expected)):
        ref = crop_file(path, 256)
        np.testing.assert_array_equal(raw_images[i], ref, err_msg=path)
        scores.append(psnr(jpg_images[i], ref))
    assert min(scores) > 26.0 and float(np.mean(scores)) > 34.0, (min(scores), np.mean(scores))


def test_killed_writer_leaves_no_finished_file(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    data = make_image_folder(tmp_path / "data", num_classes=4, per_class=40, broken=False, val=False).root
    out = tmp_path / "out" / "train.beton"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "jit_ffcv.cli", "write", "--data-path", str(data), "--img-size", "256",
         "--mode", "raw", "--num-workers", "1", "--out", str(out)],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(out.parent.glob(".train.beton.*.partial")) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL  # killed while writing, not after finishing
    assert not out.exists() and not sidecar_path(out).exists()
    assert len(list(out.parent.glob(".train.beton.*.partial"))) == 1  # only the hidden partial file remains


def test_no_shuffle_keeps_folder_order_and_seed_changes_it(synthetic: SyntheticFolder, tmp_path: Path) -> None:
    samples = expected_samples(synthetic.root / "train")
    kept = [i for i, (p, _) in enumerate(samples) if p not in synthetic.broken]
    args = {"img_size": 32, "mode": "raw", "num_workers": 2, "progress": False}
    folder = write_split(synthetic.root, "train", tmp_path / "f.beton", shuffle_seed=None, **args)
    seeded = write_split(synthetic.root, "train", tmp_path / "s.beton", shuffle_seed=7, **args)
    assert read_indices(tmp_path / "f.beton").tolist() == kept
    assert read_indices(tmp_path / "s.beton").tolist() == shuffled_kept(samples, synthetic.broken, seed=7) != kept
    assert (folder.sample_order, folder.shuffle_seed, seeded.sample_order, seeded.shuffle_seed) == \
        ("folder", None, "shuffled", 7)
    assert json.loads(sidecar_path(tmp_path / "s.beton").read_text())["shuffle_seed"] == 7
    _, labels = read_beton(tmp_path / "f.beton")
    assert labels.tolist() == [samples[i][1] for i in kept]


def test_bad_shuffle_seed_fails_before_any_work(synthetic: SyntheticFolder, tmp_path: Path) -> None:
    message = r"shuffle_seed must be an integer >= 0 \(or None to keep folder order\), got -1"
    with pytest.raises(ValueError, match=message):
        write_split(synthetic.root, "train", tmp_path / "x.beton", img_size=32, mode="raw", num_workers=0,
                    progress=False, shuffle_seed=-1)
    assert os.listdir(tmp_path) == []


def test_replicate_keeps_payloads_labels_and_indices(raw_beton: Path, tmp_path: Path) -> None:
    out = tmp_path / "x3.beton"
    meta = replicate_beton(raw_beton, out, 3)
    payloads, labels = read_payloads(raw_beton)
    big_payloads, big_labels = read_payloads(out)
    assert big_payloads == payloads * 3 and big_labels.tolist() == labels.tolist() * 3
    assert read_indices(out).tolist() == read_indices(raw_beton).tolist() * 3
    assert (meta.num_samples, meta.sample_order, meta.shuffle_seed) == (60, "shuffled", 0)


def test_cli_no_shuffle_and_info_layout(synthetic: SyntheticFolder, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from jit_ffcv.cli import main

    common = ["write", "--data-path", str(synthetic.root), "--img-size", "32", "--mode", "raw", "--num-workers", "0"]
    assert main(common + ["--no-shuffle", "--out", str(tmp_path / "f.beton")]) == 0
    assert main(common + ["--shuffle-seed", "5", "--out", str(tmp_path / "s.beton")]) == 0
    assert read_metadata(tmp_path / "f.beton").sample_order == "folder"
    assert read_metadata(tmp_path / "s.beton").shuffle_seed == 5
    capsys.readouterr()
    assert main(["info", str(tmp_path / "s.beton")]) == 0
    assert "order:        shuffled (seed 5); sample i is ImageFolder sample index[i] (field 'index')" \
        in capsys.readouterr().out
    assert main(["info", str(tmp_path / "f.beton")]) == 0
    assert "order:        ImageFolder (class-sorted)" in capsys.readouterr().out


# ---------------------------------------------------------------- failure behaviour (issue 8)
@pytest.mark.timeout(120)
def test_fifo_named_like_an_image_is_skipped(tmp_path: Path) -> None:
    s = make_image_folder(tmp_path / "d", num_classes=2, per_class=2, broken=False, val=False)
    fifo = s.root / "train" / s.classes[1] / "zz_pipe.JPEG"
    os.mkfifo(fifo)
    meta = write_split(s.root, "train", tmp_path / "x.beton", img_size=32, mode="raw", num_workers=0, progress=False)
    assert meta.num_samples == 4 and meta.class_counts == [2, 2]
    assert meta.skipped == [{"path": str(fifo), "error": "NotARegularFileError: not a regular file (FIFO)"}]


def test_out_naming_a_directory_fails_before_any_work(synthetic: SyntheticFolder, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import writers.beton

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("images were processed before the output path was checked")

    monkeypatch.setattr(writers.beton, "encoded_in_order", no_work)
    (tmp_path / "out.beton").mkdir()
    with pytest.raises(ValueError, match=f"output {tmp_path / 'out.beton'} is a directory"):
        write_split(synthetic.root, "train", tmp_path / "out.beton", img_size=32, mode="raw", num_workers=0,
                    progress=False)
    assert os.listdir(tmp_path) == ["out.beton"] and os.listdir(tmp_path / "out.beton") == []


def test_disk_full_while_the_sidecar_is_written_leaves_nothing(synthetic: SyntheticFolder, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def full_disk(self: Path, text: str, *args: object, **kwargs: object) -> int:
        self.touch()  # the file is created, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        write_split(synthetic.root, "train", tmp_path / "x.beton", img_size=32, mode="raw", num_workers=0,
                    progress=False)
    assert os.listdir(tmp_path) == []


def test_finished_beton_is_not_overwritten_without_force(synthetic: SyntheticFolder, tmp_path: Path) -> None:
    out = tmp_path / "x.beton"
    args = {"img_size": 32, "mode": "raw", "num_workers": 0, "progress": False}
    write_split(synthetic.root, "train", out, limit=3, **args)
    before = out.read_bytes(), sidecar_path(out).read_text()
    with pytest.raises(ValueError, match="already exists; pass force=True to overwrite it"):
        write_split(synthetic.root, "train", out, limit=5, **args)
    assert (out.read_bytes(), sidecar_path(out).read_text()) == before
    assert write_split(synthetic.root, "train", out, limit=5, force=True, **args).num_samples == 5
    assert read_metadata(out).num_samples == 5


@pytest.mark.parametrize(
    "kwargs, match",
    [({"quality": True}, "quality must be an integer, got the boolean True"),
     ({"num_workers": True}, "num_workers must be an integer, got the boolean True"),
     ({"limit": np.bool_(True)}, "limit must be an integer, got the boolean np.True_"),
     ({"quality": None}, "quality must be an integer, got None"),
     ({"quality": "90"}, "quality must be an integer, got '90'"),
     ({"img_size": 100000, "mode": "jpg"}, r"img_size must be in \[32, 4096\], got 100000"),
     ({"img_size": 2048}, r"img_size must be in \[32, 1672\], got 2048 \(a raw crop must fit one 8 MiB FFCV page")],
)
def test_options_are_checked_up_front(synthetic: SyntheticFolder, tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"img_size": 32, "mode": "raw", "num_workers": 0, "progress": False} | kwargs
    with pytest.raises(ValueError, match=match):
        write_split(synthetic.root, "train", tmp_path / "x.beton", **args)
    assert os.listdir(tmp_path) == []


def test_numpy_integers_are_accepted(synthetic: SyntheticFolder, tmp_path: Path) -> None:
    out = tmp_path / "x.beton"
    meta = write_split(synthetic.root, "train", out, img_size=np.int64(32), mode="jpg", quality=np.int32(80),
                       num_workers=np.int64(0), limit=np.int64(4), progress=False)
    saved = json.loads(sidecar_path(out).read_text())
    assert (saved["img_size"], saved["quality"], saved["num_workers"], saved["num_samples"]) == (32, 80, 0, 4)
    assert type(meta.img_size) is int


def test_relative_data_path_stores_absolute_paths(synthetic: SyntheticFolder, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(synthetic.root.parent)
    meta = write_split(synthetic.root.name, "train", tmp_path / "x.beton", img_size=32, mode="raw", num_workers=0,
                       progress=False)
    assert sorted(s["path"] for s in meta.skipped) == synthetic.broken
    assert meta.ignored == synthetic.non_images
    assert all(os.path.isabs(p) for p in [meta.source, *meta.ignored, *(s["path"] for s in meta.skipped)])


@pytest.mark.parametrize("damage, match", [
    (lambda d: "{not json", "is not valid JSON"),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "classes"}), r"missing keys \['classes'\]"),
    (lambda d: json.dumps(d | {"colour": 1}), r"unknown keys \['colour'\]"),
])
def test_broken_sidecar_is_an_error_naming_the_file(raw_beton: Path, tmp_path: Path, damage, match: str) -> None:
    beton = tmp_path / raw_beton.name
    beton.write_bytes(raw_beton.read_bytes())
    sidecar_path(beton).write_text(damage(json.loads(sidecar_path(raw_beton).read_text())))
    with pytest.raises(ValueError, match=f"{sidecar_path(beton)} .*{match}"):
        read_metadata(beton)


def test_bench_writer_rates_rewrite_their_beton(tmp_path: Path) -> None:
    """The benchmark re-measures the writer into the same file on every run (needs force=True)."""
    from jit_ffcv.bench import writer_rates
    from writers.folder import scan_split

    s = make_image_folder(tmp_path / "d", num_classes=2, per_class=2, broken=False, val=False)
    scan = scan_split(s.root / "train")
    for _ in range(2):
        assert set(writer_rates(scan, 32, tmp_path, [0], min_images=4)) == {0}
    assert read_metadata(tmp_path / "writer_32_0.beton").num_samples == 4


def test_beton_published_during_the_scan_is_used(synthetic: SyntheticFolder, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """prepare_data on a second node: the first publishes while this one scans; use it, neither fail nor rewrite."""
    import writers.beton

    out = tmp_path / "x.beton"
    first = tmp_path / "first" / "x.beton"
    write_split(synthetic.root, "train", first, img_size=32, mode="raw", num_workers=0, limit=3, progress=False)
    real_scan = writers.beton.scan_split

    def scan_while_another_node_publishes(*args: object, **kwargs: object) -> object:
        sidecar_path(out).write_bytes(sidecar_path(first).read_bytes())
        out.write_bytes(first.read_bytes())
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(writers.beton, "scan_split", scan_while_another_node_publishes)
    meta = write_split(synthetic.root, "train", out, img_size=32, mode="raw", num_workers=0, progress=False)
    assert meta.num_samples == 3 and out.read_bytes() == first.read_bytes()
    assert f"{out} was written by another process; using it" in caplog.text


def test_sidecar_records_a_partial_write(synthetic: SyntheticFolder, tmp_path: Path) -> None:
    """--limit N is recorded (the DataModule never takes such a beton for the whole split); N >= files is None."""
    part = write_split(synthetic.root, "train", tmp_path / "p.beton", img_size=32, mode="raw", num_workers=0,
                       progress=False, limit=7)
    whole = write_split(synthetic.root, "train", tmp_path / "w.beton", img_size=32, mode="raw", num_workers=0,
                        progress=False, limit=23)
    assert (part.limit, part.num_samples, whole.limit, whole.num_samples) == (7, 6, None, 20)
    assert read_metadata(tmp_path / "p.beton").limit == 7


def test_skipped_files_are_logged_with_their_reasons(synthetic: SyntheticFolder, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """prepare_data's path (write_split) reports them too; unfixed, only `jit-ffcv info` showed them."""
    import logging

    out = tmp_path / "x.beton"
    with caplog.at_level(logging.WARNING, "jit_ffcv.writer"):
        meta = write_split(synthetic.root, "train", out, img_size=32, mode="raw", num_workers=0, progress=False)
    [record] = [r for r in caplog.records if "unreadable" in r.getMessage()]
    lines = record.getMessage().splitlines()
    assert record.levelno == logging.WARNING and record.name == "jit_ffcv.writer"
    assert lines[0] == f"skipped {len(synthetic.broken)} unreadable file(s) of train, all listed in {out}.json:"
    assert sorted(lines[1:]) == sorted(f"  {s['path']}: {s['error']}" for s in meta.skipped)
    assert sorted(s["path"] for s in meta.skipped) == synthetic.broken
    assert not any("<_io." in s["error"] for s in meta.skipped)  # Pillow's name for an anonymous file object
