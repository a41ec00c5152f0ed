"""`edgeq build --force` and `emulate --trace` never lose the user's files; interrupts and full disks leave nothing.

Issue 13: `edgeq build m.onnx --out . --force` deleted the working directory. Every case runs the real CLI in a
subprocess on a tiny QONNX model, with a private, empty TMPDIR, and checks the file system and /proc afterwards:
the outside oracles are the directory trees before and after, the exit status, and the kernel's process table.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from qonnx_builder import Model

EDGEQ = str(Path(sys.executable).with_name("edgeq"))
# onnxruntime's telemetry writes $TMPDIR/.ses (a session id, rewritten by every process that imports it)
FOREIGN_TMP = {".ses"}


@pytest.fixture(autouse=True)
def _tools():
    missing = [t for t in ("clang-19", "ld.lld-19", "g++") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (make setup installs them)")


@pytest.fixture
def model(tmp_path) -> Path:
    """A 2->4 channel 3x3 convolution: builds for qemu-rv32 in ~4 s, for ultra96 in ~3 s."""
    rng = np.random.default_rng(0)
    m = Model([1, 2, 6, 6])
    w = m.quant(m.c(rng.integers(-3, 4, (4, 2, 3, 3)) * 0.5), 4, 0.5)
    y = m.node("Conv", [m.quant("x", 8, 0.125), w], pads=[1, 1, 1, 1])
    (tmp_path / "in" / "models").mkdir(parents=True)
    return m.save(y, tmp_path / "in" / "models" / "m.onnx", [1, 4, 6, 6])


def start(*args, cwd: Path, tmp: Path, env: dict | None = None, umask: int | None = None) -> subprocess.Popen:
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp), **(env or {})}
    return subprocess.Popen([EDGEQ, *map(str, args)], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def edgeq(*args, cwd: Path, tmp: Path, **kw) -> subprocess.CompletedProcess:
    p = start(*args, cwd=cwd, tmp=tmp, **kw)
    out, err = p.communicate(timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def one_line(res, code: int, *needles: str) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == code and len(lines) == 1 and "Traceback" not in res.stderr, (res.returncode, res.stderr)
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` (not following links) with its kind and content hash; not the private TMPDIR."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(dirpath, d) != root / "t"]
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def tmp_left(tmp: Path) -> list[str]:
    return sorted(set(os.listdir(tmp)) - FOREIGN_TMP)


def processes_mentioning(text: str) -> list[str]:
    """Live processes whose command line or environment names ``text`` (zombies have neither)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ")
            if text.encode() in cmd or text.encode() in (d / "environ").read_bytes():
                found.append(f"{d.name}: {cmd.decode(errors='replace')[:300]}")
        except OSError:
            continue
    return found


# ------------------------------------------------------------------------------------------ what --force replaces


def test_force_refuses_every_directory_edgeq_did_not_write_and_touches_nothing(tmp_path, model):
    """Each target is refused with one line naming it, exit 2. The working directory, the model's directory,
    an ancestor of the model and the home directory are refused even though they hold an edgeq marker."""
    work, home = tmp_path / "work", tmp_path / "home"
    for d in (work, home):
        d.mkdir()
        (d / "script.py").write_text("print('mine')\n")
    marker = json.dumps({"tool": "edgeq", "version": "0.1.0", "board": "qemu-rv32"})
    for d in (work, home, model.parent, model.parent.parent):  # marked: only the specific rule can refuse them
        (d / ".edgeq-project").write_text(marker)
    (work / "notes").mkdir()
    (work / "notes" / "todo.txt").write_text("keep me\n")
    (work / "file.txt").write_text("a plain file\n")
    (work / "edgeq-made").mkdir()
    (work / "edgeq-made" / ".edgeq-project").write_text(marker)
    (work / "link").symlink_to(work / "edgeq-made")
    cases = {".": "working directory", str(work): "working directory", str(tmp_path): "working directory",
             str(model.parent): str(model), str(model.parent.parent): str(model), str(home): "home",
             "/": "working directory", "notes": "not written by edgeq", "file.txt": "is a file",
             "link": "symbolic link"}
    before = tree(tmp_path)
    for out, why in cases.items():
        res = edgeq("build", model, "--board", "qemu-rv32", "--out", out, "--force", cwd=work, tmp=tmp_path / "t",
                    env={"HOME": str(home)})
        one_line(res, 2, f"{os.path.normpath(work / out)}: ", why, "--out")
        assert tree(tmp_path) == before, out  # nothing touched, nothing left next to it
    assert tmp_left(tmp_path / "t") == []


def test_an_empty_directory_needs_no_force_and_force_replaces_only_an_edgeq_project(tmp_path, model):
    """The project carries a marker naming the board; directories get 0o777 less the umask (here 027: 0o750)."""
    out = tmp_path / "p"
    out.mkdir()
    res = edgeq("build", model, "--board", "qemu-rv32", "--out", out, "--n-vectors", 4, cwd=tmp_path,
                tmp=tmp_path / "t", umask=0o027)
    assert res.returncode == 0, res.stderr
    mark = json.loads((out / ".edgeq-project").read_text())
    assert mark["tool"] == "edgeq" and mark["board"] == "qemu-rv32" and mark["version"]
    assert (out / "model.onnx").read_bytes() == model.read_bytes()
    assert oct(out.stat().st_mode & 0o777) == oct(0o750)
    one_line(edgeq("build", model, "--board", "qemu-rv32", "--out", out, cwd=tmp_path, tmp=tmp_path / "t"), 2,
             "already exists", "--force")
    (out / "report.md").write_text("stale\n")
    res = edgeq("build", model, "--board", "qemu-rv32", "--out", out, "--n-vectors", 4, "--force", cwd=tmp_path,
                tmp=tmp_path / "t")
    assert res.returncode == 0, res.stderr
    assert (out / "report.md").read_text() != "stale\n" and (out / ".edgeq-project").exists()
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~0o022)  # this run's umask (the test's own, 022)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "p", "t"]
    assert tmp_left(tmp_path / "t") == []


def test_emulate_trace_replaces_only_a_trace_directory_edgeq_wrote(tmp_path, model):
    np.save(tmp_path / "x.npy", np.zeros((2, 2, 6, 6), np.float32))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.csv").write_text("1,2\n")
    before = tree(tmp_path)
    for trace, why in (("mine", "not written by edgeq"), (".", "working directory")):
        res = edgeq("emulate", model, "-i", "x.npy", "-o", "y.npy", "--trace", trace, cwd=tmp_path, tmp=tmp_path / "t")
        one_line(res, 2, why, "--trace")
        assert tree(tmp_path) == before
    for _ in range(2):  # the second run replaces the first run's traces
        res = edgeq("emulate", model, "-i", "x.npy", "-o", "y.npy", "--trace", "tr", cwd=tmp_path, tmp=tmp_path / "t")
        assert res.returncode == 0, res.stderr
        assert json.loads((tmp_path / "tr" / ".edgeq-project").read_text())["tool"] == "edgeq"
        assert len(list((tmp_path / "tr").glob("*.npy"))) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------------ interrupts, full disk


def _wait_for(proc: subprocess.Popen, trigger, root: Path, timeout: float = 60.0) -> None:
    """Return after ``trigger`` seconds, or once a process whose command line holds ``trigger`` runs for this
    build (its command line or environment names ``root``)."""
    if isinstance(trigger, float):
        time.sleep(trigger)
        return
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if any(trigger in p for p in processes_mentioning(str(root))):
            return
        assert proc.poll() is None, f"the build ended before {trigger} ran: {proc.stderr.read()}"
        time.sleep(0.01)
    pytest.fail(f"{trigger} did not run within {timeout} s")


@pytest.mark.parametrize("board,sig,trigger", [
    ("qemu-rv32", signal.SIGTERM, 1.5),  # writing the project (lower, plan, vectors, render)
    ("qemu-rv32", signal.SIGTERM, "--target=riscv32"),  # clang compiling the firmware
    ("qemu-rv32", signal.SIGINT, "-DEDGEQ_HOST"),  # clang compiling the host check
    ("ultra96", signal.SIGTERM, "g++"),  # the csim compile (parallel g++ in worker threads)
])
def test_an_interrupted_build_leaves_no_directory_no_temporary_file_and_no_process(tmp_path, model, board, sig,
                                                                                     trigger):
    out, tmp = tmp_path / "out" / "p", tmp_path / "t"
    out.parent.mkdir()
    proc = start("build", model, "--board", board, "--out", out, "--n-vectors", 4, cwd=tmp_path, tmp=tmp)
    _wait_for(proc, trigger, tmp_path)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert processes_mentioning(str(tmp_path)) == []  # no g++, cc1plus, clang, ld.lld or test bench survives
    assert tmp_left(tmp) == []  # nothing of clang's or g++'s in the system temp dir
    assert list(out.parent.iterdir()) == []  # no project, no .p.* staging directory
    one_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", err), 128 + sig, "interrupted")


@pytest.fixture
def full_disk(tmp_path, size):
    d = tmp_path / "full"
    d.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {res.stderr.strip()}")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.mark.parametrize("board,size", [
    ("qemu-rv32", "64k"),  # edgeq's own writes fail
    ("qemu-rv32", "96k"),  # clang fails writing the firmware (it says so in its stderr)
    ("ultra96", "64k"),  # copying the ap_types headers fails (shutil.Error keeps only the messages)
])
def test_a_full_disk_gives_one_line_and_leaves_nothing(tmp_path, model, full_disk, board, size):
    out = full_disk / "p"
    res = edgeq("build", model, "--board", board, "--out", out, "--n-vectors", 4, cwd=tmp_path, tmp=tmp_path / "t")
    one_line(res, 2, "no space left on device", str(out), "--out")
    assert list(full_disk.iterdir()) == []
    assert tmp_left(tmp_path / "t") == []


def test_two_builds_at_once_do_not_interfere_even_when_one_is_interrupted(tmp_path, model):
    """Both write next to each other; interrupting one (while its clang runs) neither stops nor spoils the other."""
    parent = tmp_path / "out"
    parent.mkdir()
    a = start("build", model, "--board", "qemu-rv32", "--out", parent / "a", "--n-vectors", 4, cwd=tmp_path,
              tmp=tmp_path / "ta")
    b = start("build", model, "--board", "qemu-rv32", "--out", parent / "b", "--n-vectors", 4, cwd=tmp_path,
              tmp=tmp_path / "tb")
    _wait_for(a, str(parent / ".a."), parent)
    a.send_signal(signal.SIGINT)
    a.wait(timeout=60)
    assert processes_mentioning(str(parent / ".a.")) == [] and tmp_left(tmp_path / "ta") == []
    assert a.returncode == 130
    _, err = b.communicate(timeout=120)
    assert b.returncode == 0, err
    assert sorted(p.name for p in parent.iterdir()) == ["b"]
    assert json.loads((parent / "b" / ".edgeq-project").read_text())["board"] == "qemu-rv32"
    assert (parent / "b" / "firmware.elf").is_file()
    assert tmp_left(tmp_path / "tb") == []
    assert processes_mentioning(str(tmp_path)) == []
