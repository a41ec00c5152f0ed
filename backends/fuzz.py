"""The fuzzer's hardware backends: random graphs (edgeq.fuzz) through the FPGA C simulation and the MCU firmware.

Both take a list of :class:`edgeq.fuzz.Case` and return one :class:`edgeq.fuzz.Result` per case, compared bit for
bit against :func:`edgeq.emulate` on the same inputs (the emulator itself is checked against QONNX by the
``emulate`` backend):

- :func:`hls` runs the build's own steps per graph (ingest, ``lower``, ``render``, the host glue's encode/decode)
  and amortises g++: every design of a batch is rendered as usual, then pasted into one C++ translation unit, each
  design's files inside a namespace of its own, with one test bench that runs them all. A batch that does not
  compile or crashes is split in halves until the culprit is alone: it is then a failure.
- :func:`mcu` runs the MCU build's own steps per graph (ingest, the FP16 lowering, the memory plan, the emulator's
  expected outputs, render) and amortises clang and QEMU the same way: every design's ``model.c`` is compiled with
  its few global symbols renamed (``edgeq_d<i>_*``), all into one firmware image and one host executable whose
  harness runs each design on its vectors. Both are compared with the emulator bit for bit (the host build is
  the build's own host check; the firmware runs on the board's simulator, as ``flash`` does). A batch that does
  not build, overflows the board, traps or stops early is split in halves until the culprit is alone.
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


@dataclass
class _McuDesign:
    index: int  # position in the batch
    ns: str  # symbol prefix of this design in the shared firmware image
    ctx: Any  # the build's McuContext after its render step
    bits: np.ndarray  # the emulator's output bit patterns, (vectors, outputs)


_MCU_SYMBOLS = ("edgeq_input", "edgeq_output", "edgeq_model_run", "edgeq_layer_names", "edgeq_weights")


def _mcu_prepare(i: int, c, root: Path, board, opts):
    """(design, refusal): the MCU build's own steps for one case up to its rendered C (load, lower, plan,
    vectors, render); the firmware and host compiles are shared by a batch."""
    from edgeq import fuzz
    from edgeq.backends.hls.build import BuildConfig
    from edgeq.backends.mcu import build as mb
    from edgeq.export import save_onnx_atomic

    model, vec, d = root / f"m{i}.onnx", root / f"x{i}.npy", root / f"d{i}"
    save_onnx_atomic(c.model, model)
    np.save(vec, np.asarray(c.x, dtype=np.float32))
    d.mkdir()
    ctx = mb.McuContext(BuildConfig(model=model, board=board.name, out=root / f"unused{i}", vectors=vec), board, d,
                        opts, scratch=root / "tmp")
    try:
        for step in (mb.step_load, mb.step_lower, mb.step_plan, mb.step_vectors, mb.step_render):
            step(ctx)
    except EdgeqError as e:
        return None, fuzz._refusal(e, c.tags)
    return _McuDesign(i, f"edgeq_d{i}", ctx, mb._bits(ctx.expected, ctx.program)), None


def _mcu_sources(designs: list[_McuDesign], work: Path) -> list[Path]:
    """One C wrapper and one data file per design (its symbols renamed to ``<ns>_*``) and a harness that runs
    every design on its vectors, printing ``EDGEQ O <k> <output bit patterns>`` per vector."""
    srcs, table = [], []
    for d in designs:
        src, g = d.ctx.tmp / "src", d.ctx.program
        n_in, n_out = int(np.prod(g.input.shape)), int(d.bits.shape[1])
        width = d.bits.dtype.itemsize
        renames = "".join(f"#define {s} {d.ns}_{s[len('edgeq_'):]}\n" for s in _MCU_SYMBOLS)
        (work / f"{d.ns}.c").write_text(
            f"{renames}#include \"{src / 'model.c'}\"\n"
            f"_Static_assert(EDGEQ_INPUT_ELEMS == {n_in} && EDGEQ_OUTPUT_ELEMS == {n_out} && "
            f"EDGEQ_OUTPUT_ELEM_BYTES == {width}, \"{d.ns}: the harness's sizes\");\n")
        (work / f"{d.ns}_data.S").write_text(
            f'    .section .rodata.{d.ns}_weights, "a"\n    .balign 8\n    .globl {d.ns}_weights\n'
            f'{d.ns}_weights:\n    .incbin "{src / "weights.bin"}"\n    .byte 0\n'
            f'    .section .edgeq_testdata, "a"\n    .balign 8\n    .globl {d.ns}_vectors\n'
            f'{d.ns}_vectors:\n    .incbin "{src / "vectors.bin"}"\n    .byte 0\n'
            '    .section .note.GNU-stack, "", @progbits\n')
        srcs += [work / f"{d.ns}.c", work / f"{d.ns}_data.S"]
        table.append((d.ns, len(d.ctx.x), n_in, n_out, width))
    decls = "".join(f"float *{ns}_input(void); const void *{ns}_output(void); void {ns}_model_run(void); "
                    f"extern const uint32_t {ns}_vectors[];\n" for ns, *_ in table)
    entries = ",\n".join(f"    {{{ns}_input, {ns}_output, {ns}_model_run, {ns}_vectors, {n}, {i}, {o}, {w}}}"
                         for ns, n, i, o, w in table)
    (work / "fuzz_main.c").write_text(f"""/* Generated by edgeq's fuzzer: each design of the batch on its vectors. */
#include <stdint.h>
#include "edgeq_io.h"
{decls}
typedef struct {{ float *(*input)(void); const void *(*output)(void); void (*run)(void); const uint32_t *vectors;
                 uint32_t n, in_el, out_el, out_bytes; }} entry_t;
static const entry_t entries[] = {{
{entries}
}};
int main(void) {{
    for (uint32_t k = 0; k < sizeof entries / sizeof entries[0]; k++) {{
        const entry_t *e = &entries[k];
        for (uint32_t v = 0; v < e->n; v++) {{
            __builtin_memcpy(e->input(), &e->vectors[v * e->in_el], 4u * e->in_el);
            e->run();
            edgeq_puts("EDGEQ O ");
            edgeq_put_hex(k, 8);
            edgeq_puts(" ");
            const void *out = e->output();
            for (uint32_t i = 0; i < e->out_el; i++) {{
                if (e->out_bytes == 2) edgeq_put_hex(((const uint16_t *)out)[i], 4);
                else edgeq_put_hex(((const uint32_t *)out)[i], 8);
            }}
            edgeq_puts("\\n");
        }}
    }}
    edgeq_puts("EDGEQ DONE\\n");
    return 0;
}}
""")
    return [*srcs, work / "fuzz_main.c"]


def _mcu_outputs(text: str, designs: list[_McuDesign]) -> list[np.ndarray] | None:
    """Each design's printed output bit patterns, or None when the run did not finish."""
    if "EDGEQ DONE" not in text:
        return None
    rows: list[list[np.ndarray]] = [[] for _ in designs]
    for line in text.splitlines():
        if line.startswith("EDGEQ O "):
            _, _, k, hexes = line.split(" ", 3)
            d = designs[int(k, 16)]
            w = 2 * d.bits.dtype.itemsize
            rows[int(k, 16)].append(np.array([int(hexes[j:j + w], 16) for j in range(0, len(hexes.strip()), w)],
                                             dtype=d.bits.dtype))
    try:
        return [np.stack(r).reshape(d.bits.shape) for r, d in zip(rows, designs)]
    except ValueError:
        return None


def _mcu_verdict(d: _McuDesign, got: np.ndarray, where: str, nan_equal: bool) -> tuple[str, str]:
    bad = got != d.bits
    if nan_equal:  # x86 makes negative default NaNs where RISC-V (and the emulator) make canonical +qNaN
        ftype = np.float16 if d.bits.dtype == np.uint16 else np.float32
        bad &= ~(np.isnan(got.view(ftype)) & np.isnan(d.bits.view(ftype)))
    if not bad.any():
        return "exact", ""
    s, j = (int(v) for v in np.argwhere(bad)[0])
    return "failed", (f"{where} differs from the emulator in {int(bad.sum())} of {bad.size} outputs; first at vector "
                      f"{s} output {j}: {int(got[s, j]):#x} vs {int(d.bits[s, j]):#x}")


def _mcu_batch(designs: list[_McuDesign], board, root: Path, timeout: float) -> dict[int, tuple[str, str]]:
    """{index: (outcome, message)}: the batch compiled once for the host and once for the board, both run, each
    design's outputs compared bit for bit; a batch that does not build or run is split until the culprit is
    alone."""
    from edgeq.backends import proc
    from edgeq.backends.mcu import build as mb
    from edgeq.backends.mcu import toolchain

    def split(why: str) -> dict[int, tuple[str, str]]:
        if len(designs) == 1:
            return {designs[0].index: ("failed", why[:400])}
        half = len(designs) // 2
        return {**_mcu_batch(designs[:half], board, root, timeout), **_mcu_batch(designs[half:], board, root, timeout)}

    work = Path(tempfile.mkdtemp(dir=root, prefix="batch"))
    srcs = _mcu_sources(designs, work)
    ksrc, inc = mb._kernel_files()
    defines = mb._defines(designs[0].ctx)
    scratch = root / "tmp"
    try:
        exe = toolchain.host_compile([*srcs, *ksrc], work / "host", include_dirs=[inc], defines=defines,
                                     tmpdir=scratch)
        toolchain.compile_elf(board, [*srcs, *ksrc], work / "firmware.elf", include_dirs=[inc], defines=defines,
                              workdir=work, tmpdir=scratch)
    except EdgeqError as e:  # a compile error, or the batch overflows the board: split it
        return split(f"the rendered C did not build: {e}")
    ran = proc.run([str(exe)], cwd=work, tmpdir=scratch, timeout=timeout)
    host = _mcu_outputs(ran.stdout, designs) if ran.returncode == 0 else None
    if host is None:
        return split(f"the host build exited {ran.returncode}: {ran.stderr.strip()[-300:]}")
    try:
        board_out = _mcu_outputs(toolchain.run_firmware(board, work / "firmware.elf", timeout_s=timeout).stdout,
                                 designs)
    except EdgeqError as e:
        return split(f"the firmware failed on {board.name}: {e}")
    if board_out is None:
        return split(f"the firmware on {board.name} did not print every output")
    out = {}
    for d, h, q in zip(designs, host, board_out):
        verdict = _mcu_verdict(d, h, "the host build", nan_equal=True)
        out[d.index] = verdict if verdict[0] == "failed" else _mcu_verdict(d, q, board.name, nan_equal=False)
    return out


def mcu(cases: list, timeout: float = 600.0, board: str = "qemu-rv32") -> list:
    """MCU firmware of every case against the emulator's FP16 program; see the module docstring."""
    from edgeq import fuzz
    from edgeq.backends.mcu.build import options_for
    from edgeq.board import get_board

    b = get_board(board)
    opts = options_for(b, True, "auto")
    results: list[Any] = [None] * len(cases)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeq-fuzz-mcu-") as tmp:
        root = Path(tmp)
        (root / "tmp").mkdir()
        designs = []
        for i, c in enumerate(cases):
            try:
                d, refusal = _mcu_prepare(i, c, root, b, opts)
            except Exception as e:  # a crash of ingest, lowering, planning or rendering is a failure of edgeq
                results[i] = fuzz.Result("failed", f"{type(e).__name__}: {e}")
                continue
            if refusal is not None:
                results[i] = refusal
            else:
                designs.append(d)
        if designs:
            for i, (outcome, msg) in _mcu_batch(designs, b, root, timeout).items():
                results[i] = fuzz.Result(outcome, msg)
    per_case = (time.perf_counter() - t0) / max(1, len(cases))
    for c, r in zip(cases, results):
        r.seconds = per_case
        r.ops, r.fmts = _tags(c)
    return results


def _register() -> None:
    from edgeq import fuzz

    fuzz.backend("hls")(hls)
    fuzz.backend("mcu")(mcu)


_register()
