"""Faults a cluster serves up, created for real: a full disk under every writer, two processes on one output
directory, and the error-path loose ends. Each ends in one line ``diffvqa <command>: error: ...`` (exit 2), loses
nothing, and a rerun after the fault is gone finishes the job. The table of what a user sees: docs/faults.md.

A full disk is a real small file system (a tmpfs mounted for the test, where the machine lets the tests mount:
root on Linux) and, everywhere, a write that fails with ENOSPC at the lowest level we call (``torch.save``'s file,
the free space ``shutil.disk_usage`` reports). The lock is tested with two real processes.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffvqa.cli import main as cli_main
from diffvqa.errors import UserError
from diffvqa.files.run import read_pointer

TINY = ["--preset", "tiny", "--no-progress", "train.eval_samples=8", "train.steps=4", "train.checkpoint_every=2"]
SRC = Path(__file__).resolve().parents[1] / "src"


def run(argv: list, capsys) -> tuple[int, str]:
    """``diffvqa ARGV`` in this process -> (exit code, stderr)."""
    try:
        code = cli_main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def one_line(code: int, err: str, command: str) -> str:
    """The one error line of a command that failed as a user error (asserted), without its prefix."""
    # a note said before the failure (e.g. train's "the encoder starts from random weights") is not the error
    lines = [line for line in err.strip().splitlines() if not line.startswith(f"diffvqa {command}: note: ")]
    assert code == 2, f"exit code {code}: {err[-2000:]}"
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    prefix = f"diffvqa {command}: error: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0][len(prefix) :]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(read_pointer(run_dir, "latest") / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    x, y = weights(a), weights(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# ----------------------------------------------------------------------------------------------------------
# a small file system


def _mount_works() -> bool:
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(f"/tmp/diffvqa-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True)
        if ok.returncode != 0:
            return False
        subprocess.run(["umount", str(probe)], check=True)
        return True
    finally:
        probe.rmdir()


MOUNT = _mount_works()
needs_mount = pytest.mark.skipif(not MOUNT, reason="mounting a tmpfs needs root on Linux (the patched twins run)")


class SmallDisk:
    """A tmpfs of a given size at a directory; :meth:`grow` frees space (a bigger size, the files kept)."""

    def __init__(self, path: Path, size: str):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)

    def grow(self, size: str = "64m") -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(size)`` -> a :class:`SmallDisk` under tmp_path; unmounted after the test."""
    disks = []

    def make(size: str) -> SmallDisk:
        disks.append(SmallDisk(tmp_path / f"disk{len(disks)}", size))
        return disks[-1]

    yield make
    for disk in disks:
        disk.unmount()


# ----------------------------------------------------------------------------------------------------------
# a full disk while training


@needs_mount
@pytest.mark.parametrize("size", ["500k", "1500k"], ids=["in-the-weights", "in-the-trainer-state"])
def test_training_on_a_disk_that_fills_up_during_the_first_checkpoint(
    phantom_cache, tmp_path, small_disk, size, capsys
):
    """The first checkpoint (0.6 MB of weights, 1.3 MB of trainer state) does not fit: one line, the temp dir gone,
    and once space is freed the same command trains to the weights of a run that never saw the fault."""
    disk = small_disk(size)
    argv = ["train", "--data", phantom_cache, "--out", disk.path / "run", *TINY]
    line = one_line(*run(argv, capsys), "train")
    assert line.startswith(f"{disk.path / 'run'}: the device is full (No space left on device")
    assert "removed the partial" in line and ".tmp-step-0000002" in line
    assert "free space, then run the same command again (no checkpoint was complete yet" in line
    assert not list((disk.path / "run" / "checkpoints").glob(".tmp-step-*"))
    assert read_pointer(disk.path / "run", "latest") is None
    disk.grow()
    assert run(argv, capsys)[0] == 0
    assert run(["train", "--data", phantom_cache, "--out", tmp_path / "straight", *TINY], capsys)[0] == 0
    assert same_weights(disk.path / "run", tmp_path / "straight")


@needs_mount
def test_training_refuses_a_checkpoint_that_cannot_fit_and_resumes_when_space_is_freed(
    phantom_cache, tmp_path, small_disk, capsys
):
    """3 MB holds one checkpoint but not two: the second is refused before it is written, with the numbers and the
    checkpoint --resume continues from; after freeing space --resume ends where an uninterrupted run ends."""
    disk = small_disk("3m")
    out = disk.path / "run"
    line = one_line(*run(["train", "--data", phantom_cache, "--out", out, *TINY], capsys), "train")
    assert line.startswith(f"{out}: the device is full (the checkpoint of step 4, as large as step-0000002, needs ")
    assert " MB but the device has " in line and " MB free)" in line
    assert line.endswith(
        f"free space, then rerun with --resume: it continues from {out}/checkpoints/step-0000002 (step 2); "
        "nothing before it is lost"
    )
    assert read_pointer(out, "latest").name == "step-0000002"
    assert not list((out / "checkpoints").glob(".tmp-step-*"))
    # resuming on the still-full disk is refused at once, before any step is trained
    line = one_line(
        *run(["train", "--data", phantom_cache, "--out", out, "--resume", "--no-progress"], capsys), "train"
    )
    assert "the next checkpoint, as large as step-0000002, needs" in line
    disk.grow()
    assert run(["train", "--data", phantom_cache, "--out", out, "--resume", "--no-progress"], capsys)[0] == 0
    assert run(["train", "--data", phantom_cache, "--out", tmp_path / "straight", *TINY], capsys)[0] == 0
    assert same_weights(out, tmp_path / "straight")
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(4) == 2  # each step once (a train and a validation record at 4)


def _full_device_save(obj, f, *args, **kwargs):
    """torch.save onto a device that fills up after a few bytes: the file's write fails with ENOSPC."""
    f.write(b"PK\x03\x04")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_training_checkpoint_write_failing_with_enospc(phantom_cache, tmp_path, monkeypatch, capsys):
    """The same fault without a small file system: the trainer state's file write raises ENOSPC at step 4."""
    out = tmp_path / "run"
    assert run(["train", "--data", phantom_cache, "--out", out, *TINY, "--stop-after", "2"], capsys)[0] == 0
    monkeypatch.setattr(torch, "save", _full_device_save)
    line = one_line(
        *run(["train", "--data", phantom_cache, "--out", out, "--resume", "--no-progress"], capsys), "train"
    )
    assert line.startswith(f"{out}: the device is full (No space left on device; removed the partial ")
    assert line.endswith(f"it continues from {out}/checkpoints/step-0000002 (step 2); nothing before it is lost")
    assert not list((out / "checkpoints").glob(".tmp-step-*"))
    assert read_pointer(out, "latest").name == "step-0000002"


def test_a_runtime_error_is_a_full_disk_only_when_the_disk_is_full(phantom_cache, tmp_path, monkeypatch, capsys):
    """torch's C++ writer given a path loses the errno ("unexpected pos ..."): the free space decides, not the
    message. With space left, the same RuntimeError is a bug and keeps its traceback."""
    import diffvqa.files.disk

    out = tmp_path / "run"
    assert run(["train", "--data", phantom_cache, "--out", out, *TINY, "--stop-after", "2"], capsys)[0] == 0

    def torn_save(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        cli_main([str(a) for a in ["train", "--data", phantom_cache, "--out", out, "--resume", "--no-progress"]])
    full = []  # the device fills up during the save, not before it (the resume checks the space first)

    def filling_save(obj, f, *args, **kwargs):
        full.append(True)
        torn_save(obj, f)

    real = shutil.disk_usage
    monkeypatch.setattr(
        diffvqa.files.disk.shutil, "disk_usage", lambda p: real(p)._replace(free=4096) if full else real(p)
    )
    monkeypatch.setattr(torch, "save", filling_save)
    line = one_line(
        *run(["train", "--data", phantom_cache, "--out", out, "--resume", "--no-progress"], capsys), "train"
    )
    assert "the device is full (a write failed with 4.1 kB free; removed the partial" in line
    assert not list((out / "checkpoints").glob(".tmp-step-*"))


# ----------------------------------------------------------------------------------------------------------
# a full disk while preparing


def _prepare(release: Path, out: Path) -> list:
    return ["prepare", "--release", release, "--out", out, "--size", "64", "--quiet", "--workers", "1"]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    from diffvqa.data.phantom import simulate

    root = tmp_path_factory.mktemp("faults_release")
    simulate(root / "release", pairs=48, seed=3, size=(160, 128), progress=False)
    return root / "release"


@needs_mount
@pytest.mark.parametrize(
    ("size", "said"),
    [("400k", "the cache, 72 images x 64 x 64 bytes, needs 296.7 kB but the device has "),
     ("600k", "No space left on device"), ("1200k", "No space left on device")],
    ids=["before-decoding", "truth-masks", "truth-regions"],
)  # fmt: skip
def test_prepare_on_a_disk_that_fills_up_resumes_to_the_same_cache(release, tmp_path, small_disk, size, said, capsys):
    """Too small for the images (refused before decoding, with the numbers), or full while writing the ground
    truth after decoding: one line, no SIGBUS from the memory maps; after freeing space the same command finishes
    with the files a roomy disk gets."""
    disk = small_disk(size)
    out = disk.path / "cache"
    line = one_line(*run(_prepare(release, out), capsys), "prepare")
    assert line.startswith(f"{out}: the device is full ({said}")
    assert line.endswith("free space, then run the same command again: it resumes, keeping the images already decoded")
    assert not (out / "manifest.json").exists() and not list(out.glob(".*.tmp"))
    disk.grow()
    assert run(_prepare(release, out), capsys)[0] == 0
    assert run(_prepare(release, tmp_path / "roomy"), capsys)[0] == 0
    for name in ("images.u8.npy", "geometry.npy", "status.npy", "questions.csv", "truth/change_masks.u8.npy"):
        assert (out / name).read_bytes() == (tmp_path / "roomy" / name).read_bytes(), name


def test_prepare_refuses_a_cache_that_cannot_fit_with_the_numbers(release, tmp_path, monkeypatch, capsys):
    """N x S x S bytes are known before decoding starts: with less free, refuse and say both numbers."""
    import diffvqa.files.disk

    real = shutil.disk_usage
    monkeypatch.setattr(diffvqa.files.disk.shutil, "disk_usage", lambda p: real(p)._replace(free=100_000))
    out = tmp_path / "cache"
    line = one_line(*run(_prepare(release, out), capsys), "prepare")
    assert line == (
        f"{out}: the device is full (the cache, 72 images x 64 x 64 bytes, needs 296.7 kB but the device has "
        "100.0 kB free); free space, then run the same command again: it resumes, keeping the images already decoded"
    )
    assert not (out / "images.u8.npy").exists()
    monkeypatch.undo()
    assert run(_prepare(release, out), capsys)[0] == 0 and (out / "manifest.json").is_file()


# ----------------------------------------------------------------------------------------------------------
# a full disk while logging, evaluating, viewing


@needs_mount
def test_a_metrics_record_that_does_not_fit_leaves_no_torn_line(small_disk):
    from diffvqa.files.disk import DiskFullError
    from diffvqa.files.run import append_metrics

    disk = small_disk("64k")
    append_metrics(disk.path, {"step": 1, "loss": 1.0})
    before = (disk.path / "metrics.jsonl").read_bytes()
    with pytest.raises(OSError):  # fill the rest of the device
        with (disk.path / "filler").open("wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    with pytest.raises(
        DiskFullError, match=r"metrics.jsonl: the device is full \(No space left on device while appending a record\)"
    ):
        append_metrics(disk.path, {"step": 2, "note": "x" * 20_000})
    assert (disk.path / "metrics.jsonl").read_bytes() == before


@needs_mount
def test_evaluation_on_a_full_disk_removes_its_partial_outputs(phantom_cache, tmp_path, small_disk, capsys):
    assert run(["train", "--data", phantom_cache, "--out", tmp_path / "run", *TINY], capsys)[0] == 0
    disk = small_disk("200k")
    out = disk.path / "eval"
    argv = ["evaluate", "--checkpoint", tmp_path / "run", "--data", phantom_cache, "--out", out, "--no-progress"]
    line = one_line(*run(argv, capsys), "evaluate")
    assert line.startswith(f"{out}: the device is full (No space left on device")
    assert line.endswith("free space, then run the same command again")
    assert not out.exists()  # predictions, metrics, report, viewer removed, and the --out this run created
    disk.grow()
    assert run(argv, capsys)[0] == 0 and (out / "viewer" / "index.html").is_file()


def test_the_viewer_on_a_full_disk(tmp_path, monkeypatch, capsys):
    """``diffvqa view``: the data file's write fails with ENOSPC."""
    from pathlib import Path as RealPath

    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    record = {"question_type": "difference", "question": "q?", "answer": "a", "final": "a"}
    (eval_dir / "predictions.jsonl").write_text(json.dumps(record) + "\n")
    real_write_text = RealPath.write_text

    def full(self, *args, **kwargs):
        if self.name == "data.js":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(RealPath, "write_text", full)
    line = one_line(*run(["view", eval_dir], capsys), "view")
    assert line == (
        f"{eval_dir}: the device is full (No space left on device writing {eval_dir}/viewer/data.js); "
        "free space, then run the same command again"
    )


# ----------------------------------------------------------------------------------------------------------
# one writer per output directory


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}


def _wait_for_lock(directory: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``process`` has written its PID into ``directory/.lock``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lock = directory / ".lock"
        if lock.is_file() and lock.read_text().startswith(f"{process.pid} "):
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.1)
    raise AssertionError(f"{process.pid} did not lock {directory}")


def _hold_lock(directory: Path, command: str = "holder") -> subprocess.Popen:
    """A process that takes ``directory``'s lock and sleeps until killed."""
    code = (
        f"import time; from diffvqa.files.lock import output_lock\nwith output_lock({str(directory)!r}, {command!r}):\n"
    )
    process = subprocess.Popen(_python(code + "    time.sleep(600)"), env=_env())
    _wait_for_lock(directory, process)
    return process


def test_two_trainings_into_one_directory_the_second_is_refused_naming_the_first(phantom_cache, tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "diffvqa.cli", "train", "--data", str(phantom_cache), "--out", str(out), *TINY]
    first = subprocess.Popen([*argv, "train.steps=400"], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_lock(out, first)
        second = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=240)
        line = one_line(second.returncode, second.stderr, "train")
        assert line == (
            f"{out}: another process is writing here (PID {first.pid}, diffvqa train); wait for it to finish or "
            "choose another output directory"
        )
        assert first.poll() is None  # the first goes on undisturbed
    finally:
        first.kill()
        first.wait()
    # SIGKILL left the lock file naming a dead process: it blocks nobody
    from diffvqa.files.lock import output_lock

    assert (out / ".lock").read_text().startswith(f"{first.pid} ")
    with output_lock(out, "after the kill"):
        assert (out / ".lock").read_text().startswith(f"{os.getpid()} ")


@pytest.mark.parametrize("command", ["prepare", "evaluate", "study", "train"])
def test_every_writer_takes_the_lock(command, phantom_cache, release, tmp_path, capsys):
    out = tmp_path / "out"
    holder = _hold_lock(out, "diffvqa elsewhere")
    try:
        argv = {
            "prepare": _prepare(release, out),
            "evaluate": ["evaluate", "--checkpoint", tmp_path / "none", "--data", phantom_cache, "--out", out],
            "study": ["study", "--data", phantom_cache, "--out", out, "--seeds", "1", "--variants", "full"],
            "train": ["train", "--data", phantom_cache, "--out", out, *TINY],
        }[command]
        line = one_line(*run(argv, capsys), command)
        assert line.startswith(f"{out}: another process is writing here (PID {holder.pid}, diffvqa elsewhere)")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_the_lock_is_reentrant_and_nested_directories_do_not_block(tmp_path):
    from diffvqa.files.lock import output_lock

    with output_lock(tmp_path / "a", "outer") as a:
        with output_lock(a, "the same process again"):  # e.g. a script holding --out that calls train()
            with output_lock(a / "runs" / "seed0", "a study's run"):
                assert (a / "runs" / "seed0" / ".lock").is_file()
        assert (a / ".lock").read_text().split()[0] == str(os.getpid())  # still held by the outer block
    assert not (tmp_path / "a" / ".lock").exists()


def test_a_library_call_inside_the_lock_of_its_own_directory(phantom_cache, tmp_path):
    from diffvqa.commands.train import train
    from diffvqa.config import load_config
    from diffvqa.files.lock import output_lock

    config = load_config("tiny", overrides=["train.steps=1", "train.eval_samples=4"])
    with output_lock(tmp_path / "run", "a user's script"):
        train(config, phantom_cache, run_dir=tmp_path / "run", progress=False)
    assert read_pointer(tmp_path / "run", "latest").name == "step-0000001"


def test_ranks_other_than_zero_do_not_lock(tmp_path, monkeypatch):
    """Under torchrun rank 0 locks for the job; another rank of the same job writing into the same --out must not
    be turned away (the two-process torchrun test in test_train.py runs this for real)."""
    from diffvqa.files.lock import output_lock

    holder = _hold_lock(tmp_path / "run", "rank 0")
    try:
        monkeypatch.setenv("RANK", "1")
        with output_lock(tmp_path / "run", "rank 1"):
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(UserError, match=f"PID {holder.pid}, rank 0"):
            with output_lock(tmp_path / "run", "another job"):
                pass
    finally:
        holder.kill()
        holder.wait()


# ----------------------------------------------------------------------------------------------------------
# the loose ends


def test_simulate_argument_checks_are_user_errors(tmp_path, capsys):
    from diffvqa.data.phantom import simulate

    for kwargs, message in (({"pairs": 0}, "pairs=0: expected a positive integer"),
                            ({"pairs": 1, "seed": -1}, "seed=-1"), ({"pairs": 1, "size": (8, 8)}, "size=(8, 8)"),
                            ({"pairs": 1, "workers": -2}, "workers=-2")):  # fmt: skip
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            simulate(tmp_path / "r", progress=False, **kwargs)
    assert run(["simulate", "--out", tmp_path / "r", "--pairs", "1", "--quiet"], capsys)[0] == 0
    line = one_line(*run(["simulate", "--out", tmp_path / "r", "--pairs", "1", "--quiet"], capsys), "simulate")
    assert line.startswith(f"{tmp_path / 'r'}: already holds a release (") and "--overwrite" in line


def test_contact_sheet_reports_user_errors_and_keeps_the_traceback_of_a_bug(release, tmp_path, monkeypatch, capsys):
    import diffvqa.data.phantom.simulator as simulator

    broken = tmp_path / "release"
    shutil.copytree(release, broken, ignore=shutil.ignore_patterns("files"))
    (broken / "mimic_all.csv").unlink()
    line = one_line(*run(["contact-sheet", "--release", broken, "--out", tmp_path / "s.png"], capsys), "contact-sheet")
    assert line == f"{broken / 'mimic_all.csv'}: not found"
    shutil.copy(release / "mimic_all.csv", broken / "mimic_all.csv")
    line = one_line(*run(["contact-sheet", "--release", broken, "--out", tmp_path / "s.png"], capsys), "contact-sheet")
    assert line.startswith(f"{broken}/files/p") and ": not found (the image of study " in line

    def bug(*args, **kwargs):
        raise ValueError("an internal invariant failed")

    monkeypatch.setattr(simulator, "contact_sheet", bug)
    with pytest.raises(ValueError, match="internal invariant"):
        cli_main(["contact-sheet", "--release", str(release), "--out", str(tmp_path / "s.png")])


def test_demo_reports_user_errors_and_keeps_the_traceback_of_a_bug(tmp_path, monkeypatch, capsys):
    import diffvqa.commands.demo

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    line = one_line(*run(["demo", "--out", tmp_path / "busy"], capsys), "demo")
    assert line == f"{tmp_path / 'busy'} is not empty; choose another --out or remove it"

    def bug(*args, **kwargs):
        raise ValueError("an internal invariant failed")

    monkeypatch.setattr(diffvqa.commands.demo, "run_demo", bug)
    with pytest.raises(ValueError, match="internal invariant"):
        cli_main(["demo", "--out", str(tmp_path / "new")])


def test_a_trainer_state_without_its_keys_is_one_line_naming_them(phantom_cache, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["train", "--data", phantom_cache, "--out", out, *TINY, "--stop-after", "2"], capsys)[0] == 0
    state_file = read_pointer(out, "latest") / "trainer_state.pt"
    state = torch.load(state_file, weights_only=True)
    torch.save({k: v for k, v in state.items() if k not in ("scheduler", "torch_rng")}, state_file)
    line = one_line(
        *run(["train", "--data", phantom_cache, "--out", out, "--resume", "--no-progress"], capsys), "train"
    )
    assert line.startswith(f"{state_file}: the trainer state lacks ['scheduler', 'torch_rng'] (it holds ['best', ")


def test_a_failed_evaluation_leaves_no_output_directory(phantom_cache, tmp_path, capsys):
    """The checkpoint is found but its weights are cut short: the error comes from loading it, and --out (which
    evaluate creates) is not left behind empty."""
    from diffvqa.config import load_config
    from diffvqa.data.text import build_word_tokenizer
    from diffvqa.model.checkpoint import save_checkpoint
    from diffvqa.model.vqa import DiffVQA

    checkpoint = save_checkpoint(DiffVQA(load_config("tiny"), build_word_tokenizer(["yes", "no"])), tmp_path / "ckpt")
    weights_file = checkpoint / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:100])
    out = tmp_path / "eval"
    argv = ["evaluate", "--checkpoint", checkpoint, "--data", phantom_cache, "--out", out, "--no-progress"]
    assert "model.safetensors: not a readable safetensors file" in one_line(*run(argv, capsys), "evaluate")
    assert not out.exists()


def test_a_cache_staged_by_an_older_version_names_the_settings(release, tmp_path, monkeypatch, capsys):
    """An interrupted prepare of an older diffvqa (its prepare.json without the newer keys), resumed by this one."""
    import diffvqa.data.cache_writer as cache_writer

    out = tmp_path / "cache"

    def interrupt(count):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_writer, "_chunk_done", interrupt)
    with pytest.raises(KeyboardInterrupt):
        cli_main([str(a) for a in _prepare(release, out)])
    monkeypatch.undo()
    params = json.loads((out / "prepare.json").read_text())
    del params["keep_duplicates"]
    (out / "prepare.json").write_text(json.dumps(params | {"cache_version": 0}))
    line = one_line(*run(_prepare(release, out), capsys), "prepare")
    assert line == (
        f"{out}: holds a cache prepared with other settings or another image list (cache_version: 0 (staged by "
        "another diffvqa version) -> 1; keep_duplicates: not recorded (staged by an older diffvqa) -> False); use "
        "a new --out directory or delete this one"
    )
    (out / "prepare.json").write_text("{not json")
    line = one_line(*run(_prepare(release, out), capsys), "prepare")
    assert line.startswith(f"{out / 'prepare.json'}: cannot read the staged settings (")


def test_a_study_quotes_the_one_line_of_a_run_that_failed_as_a_user_error(tmp_path):
    """The study runs train and evaluate as subprocesses: their one line (a full disk, a busy directory, ...) is the
    study's, not "a run failed, see its log"."""
    from diffvqa.commands.study import _run_logged

    run_dir = tmp_path / "runs" / "full" / "seed0"
    with (tmp_path / "seed0.log").open("a") as log:
        with pytest.raises(UserError) as caught:
            _run_logged(["train", "--data", str(tmp_path / "nowhere"), "--out", str(run_dir)], log, _env(), run_dir)
    assert str(caught.value) == (
        f"{run_dir}: diffvqa train: error: --data {tmp_path / 'nowhere'}: not a prepared cache (no manifest.json); "
        "run `diffvqa prepare` first (see diffvqa train --help); rerun the study to resume"
    )
