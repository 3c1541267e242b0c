"""`diffvqa prepare --list-images`: exactly the images prepare would decode, as paths relative to the MIMIC-CXR-JPG
root, from the CSVs alone, with the count and the download size."""

from __future__ import annotations

import json
import shutil

import pytest

from diffvqa.data.cache_writer import prepare_main
from diffvqa.data.download_list import MEAN_JPEG_BYTES, needed_images


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    from diffvqa.data.phantom import simulate

    root = tmp_path_factory.mktemp("list") / "release"
    simulate(root, pairs=12, seed=5, size=(96, 80), progress=False)
    return root


def test_the_list_is_what_prepare_decodes(release, tmp_path, capsys):
    listed = tmp_path / "images.txt"
    assert prepare_main(["--release", str(release), "--list-images", str(listed)]) == 0
    err = capsys.readouterr().err
    paths = listed.read_text().splitlines()
    assert paths == sorted(set(paths)) and all(p.startswith("files/p") and p.endswith(".jpg") for p in paths)
    assert all((release / p).is_file() for p in paths)  # the phantom keeps MIMIC-CXR-JPG's layout
    assert f"{len(paths):,} images" in err and "estimated download" in err and "already on disk" not in err
    cache = tmp_path / "cache"
    assert prepare_main(["--release", str(release), "--out", str(cache), "--size", "32", "--workers", "0",
                         "--quiet"]) == 0  # fmt: skip
    assert json.loads((cache / "manifest.json").read_text())["num_images"] == len(paths)


def test_question_types_narrow_the_list_and_stdout_takes_it(release, capsys):
    everything = needed_images(release).paths
    assert prepare_main(["--release", str(release), "--list-images", "-", "--question-types", "difference"]) == 0
    captured = capsys.readouterr()
    difference = captured.out.splitlines()
    assert set(difference) <= set(everything) and difference
    assert "listed in stdout" in captured.err and "files/" not in captured.err


def test_images_already_on_disk_are_counted(release, tmp_path):
    images = tmp_path / "mimic"
    wanted = needed_images(release).paths
    for rel in wanted[:3]:  # a partial download
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(release / rel, images / rel)
    listed = needed_images(release, images)
    assert listed.present == 3 and listed.present_bytes == sum((images / r).stat().st_size for r in wanted[:3])
    assert listed.estimated_bytes == pytest.approx(len(wanted) * MEAN_JPEG_BYTES)
    assert f"still to fetch: {len(wanted) - 3:,}" in listed.summary("x")


def test_list_images_does_not_combine_with_merge(release, tmp_path, capsys):
    with pytest.raises(SystemExit):
        prepare_main(["--release", str(release), "--list-images", "-", "--merge", str(tmp_path)])
    assert "does not combine with --merge" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prepare_main(["--release", str(release)])
    assert "--out is required" in capsys.readouterr().err
