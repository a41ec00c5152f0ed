"""The fuzzer's hardware backends: random graphs (edgeq.fuzz) through the FPGA C simulation and the MCU firmware.

Both take a list of :class:`edgeq.fuzz.Case` and return one :class:`edgeq.fuzz.Result` per case, compared bit for
bit against :func:`edgeq.emulate` on the same inputs (the emulator itself is checked against QONNX by the
``emulate`` backend):

- :func:`hls` runs the build's own steps per graph (ingest, ``lower``, ``render``, the host glue's encode/decode)
  and amortises g++: every design of a batch is rendered as usual, then pasted into one C++ translation unit, each
  design's files inside a namespace of its own, with one test bench that runs them all. A batch that does not
  compile or crashes is split in halves until the culprit is alone: it is then a failure.
- :func:`mcu` runs ``edgeq build --board qemu-rv32`` (the library call the CLI makes: lower, plan, render, the
  host check), then ``flash`` on QEMU and ``compare``, per graph.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import EdgeqError

_GLOBAL_HEADERS = ("ap_fixed.h", "ap_int.h", "edgeq_kernels.h", "edgeq_cast.h", "edgeq_xnor.h", "edgeq_minifloat.h")
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.M)
_SYS_INCLUDE = re.compile(r"^\s*#\s*include\s+<[^>]+>\s*$", re.M)
_DEFINE = re.compile(r"^\s*#\s*define\s+(\w+)", re.M)


@dataclass
class _Design:
    index: int  # position in the batch
    ns: str
    root: Path
    design: Any
    x: np.ndarray
    expected: np.ndarray
    hls: dict


def _inline(path: Path, search: list[Path], seen: set[Path], sys_incs: set[str]) -> str:
    """``path`` with its quoted includes expanded in place, once per design (the design's own headers); the shared
    kernel headers are left to the global prelude, system includes are hoisted into ``sys_incs``."""
    text = path.read_text()
    for inc in _SYS_INCLUDE.findall(text):
        sys_incs.add(inc.strip())
    text = _SYS_INCLUDE.sub("", text)

    def expand(m: re.Match) -> str:
        name = m.group(1)
        if Path(name).name in _GLOBAL_HEADERS:
            return ""
        for d in [path.parent, *search]:
            p = (d / name).resolve()
            if p.is_file():
                if p in seen:
                    return ""
                seen.add(p)
                return _inline(p, search, seen, sys_incs)
        raise FileNotFoundError(f"{path}: include {name!r} not found")

    return _INCLUDE.sub(expand, text)


def _unity(designs: list[_Design], root: Path) -> Path:
    """One C++ file holding every design (namespace ``d<i>``) and a test bench that runs each on its inputs."""
    hls0 = designs[0].root / "hls"
    bodies, sys_incs = [], {"#include <cstdio>", "#include <cstdlib>", "#include <vector>", "#include <cstring>"}
    for d in designs:
        h = d.root / "hls"
        search = [h, h / "weights"]
        seen: set[Path] = set()
        files = [d.root / s for s in d.hls["sources"]]
        code = "\n".join(_inline(f, search, seen, sys_incs) for f in files)
        undef = "\n".join(f"#undef {m}" for m in sorted(set(_DEFINE.findall(code))))
        bodies.append(f"namespace {d.ns} {{\n{code}\n}}  // namespace {d.ns}\n{undef}\n")
    tb = ["struct Entry { void (*run)(const void *, void *, int); size_t in_size, out_size; int in_el, out_el; };"]
    for d in designs:
        tb.append(f"static void run_{d.ns}(const void *i, void *o, int n) {{ {d.ns}::edgeq_top(("
                  f"const {d.ns}::edgeq_in_t *)i, ({d.ns}::edgeq_out_t *)o, n); }}")
    entries = ", ".join(f"{{run_{d.ns}, sizeof({d.ns}::edgeq_in_t), sizeof({d.ns}::edgeq_out_t), "
                        f"{d.design.tensors[d.design.input].elements}, "
                        f"{d.design.tensors[d.design.output].elements}}}" for d in designs)
    tb += [f"static const Entry entries[] = {{{entries}}};",
           "// tb DIR: for every design k, read DIR/in<k>.bin (n = argv count file), write DIR/out<k>.bin",
           "int main(int argc, char **argv) {",
           "    if (argc < 3) return 2;",
           "    const char *dir = argv[1];",
           "    for (int a = 2; a + 1 < argc; a += 2) {",
           "        int k = std::atoi(argv[a]), n = std::atoi(argv[a + 1]);",
           "        const Entry &e = entries[k];",
           "        std::vector<char> in((size_t)n * e.in_el * e.in_size), out((size_t)n * e.out_el * e.out_size);",
           "        char path[4096];",
           "        std::snprintf(path, sizeof path, \"%s/in%d.bin\", dir, k);",
           "        FILE *f = std::fopen(path, \"rb\");",
           "        if (!f || std::fread(in.data(), 1, in.size(), f) != in.size()) return 3;",
           "        std::fclose(f);",
           "        e.run(in.data(), out.data(), n);",
           "        std::snprintf(path, sizeof path, \"%s/out%d.bin\", dir, k);",
           "        f = std::fopen(path, \"wb\");",
           "        if (!f || std::fwrite(out.data(), 1, out.size(), f) != out.size()) return 4;",
           "        std::fclose(f);",
           "    }",
           "    return 0;",
           "}"]
    prelude = sorted(sys_incs) + [f'#include "{hls0 / h}"' for h in ("ap_types/ap_fixed.h", "ap_types/ap_int.h",
                                                                      "edgeq_kernels.h", "edgeq_cast.h",
                                                                      "edgeq_xnor.h", "edgeq_minifloat.h")]
    src = root / "fuzz_unity.cpp"
    src.write_text("\n".join(prelude) + "\n" + "\n".join(bodies) + "\n".join(tb) + "\n")
    return src


def _prepare(i: int, c, root: Path):
    """(design, refusal): the build's steps for one case up to the rendered sources."""
    from edgeq import fuzz
    from edgeq.backends.hls.lower import lower
    from edgeq.backends.hls.render import render
    from edgeq.emulate import emulate
    from edgeq.ingest import load

    x = np.asarray(c.x, dtype=np.float32)
    try:
        graph = load(c.model)
        expected = emulate(graph, x)  # the emulate backend holds it to execute_onnx
        design = lower(graph, 8)
    except EdgeqError as e:
        return None, fuzz._refusal(e, c.tags)
    d = root / f"d{i}"
    d.mkdir()
    info = render(design, d, len(x))
    return _Design(i, f"d{i}", d, design, x, expected, info), None


def _compile(src: Path, designs: list[_Design], tmpdir: Path):
    from edgeq.backends import proc

    h = designs[0].root / "hls"
    exe = src.with_suffix("")
    flags = designs[0].hls["cflags"]
    res = proc.run(["g++", *flags, f"-I{h / 'ap_types'}", f"-I{h}", str(src), "-o", str(exe)], tmpdir=tmpdir,
                   timeout=1800)
    return exe if res.returncode == 0 else None, res.stderr


def _run_batch(designs: list[_Design], root: Path, tmpdir: Path) -> dict[int, tuple[str, str]]:
    """{index: (outcome, message)} for every design; splits the batch on a compile error or a crash."""
    from edgeq.backends import proc
    from edgeq.backends.compare import same_bits

    work = Path(tempfile.mkdtemp(dir=root, prefix="batch"))
    src = _unity(designs, work)
    exe, err = _compile(src, designs, tmpdir)
    if exe is None:
        if len(designs) == 1:
            return {designs[0].index: ("failed", "g++ rejected the rendered design: " + _first_error(err))}
        half = len(designs) // 2
        return {**_run_batch(designs[:half], root, tmpdir), **_run_batch(designs[half:], root, tmpdir)}
    args = []
    for k, d in enumerate(designs):
        np.ascontiguousarray(d.design.glue.encode(d.x)).tofile(work / f"in{k}.bin")
        args += [str(k), str(len(d.x))]
    res = proc.run([str(exe), str(work), *args], tmpdir=tmpdir, timeout=600)
    if res.returncode != 0:
        if len(designs) == 1:
            return {designs[0].index: ("failed", f"the C simulation exited {res.returncode}: {res.stderr[-300:]}")}
        half = len(designs) // 2
        return {**_run_batch(designs[:half], root, tmpdir), **_run_batch(designs[half:], root, tmpdir)}
    out = {}
    for k, d in enumerate(designs):
        t = d.design.tensors[d.design.output]
        codes = np.fromfile(work / f"out{k}.bin", dtype=t.dtype).reshape(-1, t.elements)
        got = d.design.glue.decode(codes)
        bad = ~same_bits(got, d.expected, signed_zero=False)
        out[d.index] = ("exact", "") if not bad.any() else (
            "failed", f"csim differs from the emulator in {int(bad.sum())} of {bad.size} outputs; first at "
                      f"{np.unravel_index(int(np.argmax(bad)), bad.shape)}: {got.flat[np.argmax(bad)]!r} vs "
                      f"{np.asarray(d.expected).flat[np.argmax(bad)]!r}")
    return out


def _tags(c) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The case's op types and format tags: the coverage map's denominators (as edgeq.fuzz.check records)."""
    return tuple(sorted({n.op_type for n in c.model.graph.node})), tuple(sorted(set(c.tags.values())))


def _first_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if "error" in ln]
    return (lines[0] if lines else stderr.strip()[-300:])[:300]


def hls(cases: list, timeout: float = 600.0) -> list:
    """FPGA C simulation of every case against the emulator; see the module docstring."""
    from edgeq import fuzz

    results: list[Any] = [None] * len(cases)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeq-fuzz-hls-") as tmp:
        root = Path(tmp)
        designs = []
        for i, c in enumerate(cases):
            try:
                d, refusal = _prepare(i, c, root)
            except Exception as e:  # a crash of ingest, lowering or rendering is a failure of edgeq
                results[i] = fuzz.Result("failed", f"{type(e).__name__}: {e}")
                continue
            if refusal is not None:
                results[i] = refusal
            else:
                designs.append(d)
        if designs:
            (root / "tmp").mkdir()
            for i, (outcome, msg) in _run_batch(designs, root, root / "tmp").items():
                results[i] = fuzz.Result(outcome, msg)
    per_case = (time.perf_counter() - t0) / max(1, len(cases))
    for c, r in zip(cases, results):
        r.seconds = per_case
        r.ops, r.fmts = _tags(c)
    return results


def mcu(cases: list, timeout: float = 600.0) -> list:
    """``edgeq build --board qemu-rv32`` + ``flash`` + ``compare`` of every case; see the module docstring."""
    from edgeq import fuzz
    from edgeq.backends.compare import compare_project
    from edgeq.backends.hls.build import BuildConfig
    from edgeq.backends.mcu.build import BuildFailed
    from edgeq.backends.mcu.build import build as mcu_build
    from edgeq.backends.mcu.flash import flash
    from edgeq.export import save_onnx_atomic

    out = []
    with tempfile.TemporaryDirectory(prefix="edgeq-fuzz-mcu-") as tmp:
        for i, c in enumerate(cases):
            t0 = time.perf_counter()
            model = Path(tmp) / f"m{i}.onnx"
            vec = Path(tmp) / f"x{i}.npy"
            save_onnx_atomic(c.model, model)
            np.save(vec, np.asarray(c.x, dtype=np.float32))
            proj = Path(tmp) / f"p{i}"
            try:
                mcu_build(BuildConfig(model=model, board="qemu-rv32", out=proj, vectors=vec), say=lambda s: None,
                          fma=True, simd="auto")
                flash(proj, "qemu-rv32", timeout=timeout)
                s = compare_project(str(proj), None)
                r = fuzz.Result("exact") if s["identical"] else fuzz.Result(
                    "failed", f"QEMU differs from the emulator in {s['mismatches']} of {s['values_compared']} values")
            except EdgeqError as e:
                r = fuzz._refusal(e, c.tags)
            except BuildFailed as e:
                r = fuzz.Result("failed", f"host check: {str(e)[:300]}")
            except Exception as e:
                r = fuzz.Result("failed", f"{type(e).__name__}: {e}")
            r.seconds = time.perf_counter() - t0
            r.ops, r.fmts = _tags(c)
            out.append(r)
    return out


def _register() -> None:
    from edgeq import fuzz

    fuzz.backend("hls")(hls)
    fuzz.backend("mcu")(mcu)


_register()
