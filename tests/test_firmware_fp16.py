"""The freestanding RV32 firmware runs on QEMU (Zfh), and its FP16 arithmetic equals numpy float16.

numpy's float16 add/sub/mul/div/sqrt compute in float32 and round once more to half; since
24 >= 2*11 + 2 that double rounding is innocuous, so numpy is a correctly rounded oracle.
The same C also compiles for the host with gcc -fexcess-precision=16 (the MCU backend's host check).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from edgeq.backends.mcu import toolchain

CLANG, QEMU = shutil.which("clang-19"), shutil.which("qemu-system-riscv32")
OPS = ("add", "sub", "mul", "div", "sqrt")


def _operands(n: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 16, (2, n), dtype=np.uint32).astype(np.uint16)
    a, b = bits.view(np.float16)
    # plus normal-range values, where most arithmetic happens, and a few exact ties
    a[:500] = (rng.standard_normal(500) * 4).astype(np.float16)
    b[:500] = (rng.standard_normal(500) * 4).astype(np.float16)
    a[500:510], b[500:510] = np.float16(2048), np.float16(1)  # 2048 + 1 is a tie at ulp 2
    return a, b


def _program(a: np.ndarray, b: np.ndarray, host: bool) -> str:
    arr = lambda v: ",".join(str(int(x)) for x in v.view(np.uint16))  # noqa: E731
    # gcc's libm has no sqrtf16: on the host, sqrt in float and round to half (innocuous double rounding)
    io = ('#include <stdio.h>\n#define PUT(v) printf("%04x ", (unsigned)(v))\n#define NL() printf("\\n")\n'
          '#define SQRT16(v) ((_Float16)__builtin_sqrtf((float)(v)))\n' if host
          else '#include "edgeq_io.h"\n#define PUT(v) (edgeq_put_hex((v), 4), edgeq_puts(" "))\n'
          '#define NL() edgeq_puts("\\n")\n#define SQRT16(v) __builtin_sqrtf16(v)\n')
    return f"""#include <stdint.h>
{io}
static const uint16_t A[{a.size}] = {{{arr(a)}}};
static const uint16_t B[{b.size}] = {{{arr(b)}}};
static uint16_t bits(_Float16 v) {{ uint16_t u; __builtin_memcpy(&u, &v, 2); return u; }}
static _Float16 half(uint16_t u) {{ _Float16 v; __builtin_memcpy(&v, &u, 2); return v; }}
int main(void) {{
    for (int i = 0; i < {a.size}; i++) {{
        volatile _Float16 x = half(A[i]), y = half(B[i]);
        PUT(bits(x + y)); PUT(bits(x - y)); PUT(bits(x * y)); PUT(bits(x / y));
        PUT(bits(SQRT16(x < 0 ? -x : x))); NL();
    }}
    return 0;
}}
"""


def _check(text: str, a: np.ndarray, b: np.ndarray) -> None:
    got = np.array([[int(t, 16) for t in line.split()] for line in text.strip().splitlines()], dtype=np.uint16)
    assert got.shape == (a.size, len(OPS))
    with np.errstate(all="ignore"):
        want = np.stack([a + b, a - b, a * b, a / b, np.sqrt(np.abs(a))], axis=1)
    g = got.view(np.float16)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(g), nan)
    mism = (got != want.view(np.uint16)) & ~nan
    assert not mism.any(), f"{int(mism.sum())} differ, first at {np.argwhere(mism)[0]}"


def _need(tool, name):
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing; `make setup` installs it with apt")
        pytest.skip(f"{name} not installed (make setup installs it)")


def test_zfh_arithmetic_on_qemu_equals_numpy_float16(tmp_path):
    _need(CLANG, "clang-19")
    _need(QEMU, "qemu-system-riscv32")
    a, b = _operands()
    (tmp_path / "main.c").write_text(_program(a, b, host=False))
    elf = tmp_path / "fw.elf"
    # crt0 + semihost.c + trap.c, linked with the script generated from boards/qemu-rv32.toml
    toolchain.compile_elf("qemu-rv32", [tmp_path / "main.c"], elf)
    runs = [toolchain.run_firmware("qemu-rv32", elf, timeout_s=60) for _ in range(2)]
    out = runs[0].stdout  # semihosting output (QEMU's stderr), merged with its stdout
    assert out == runs[1].stdout  # deterministic
    _check(out, a, b)


def test_the_same_c_on_the_host_with_excess_precision_16_equals_numpy_float16(tmp_path):
    a, b = _operands()
    (tmp_path / "main.c").write_text(_program(a, b, host=True))
    exe = tmp_path / "host"
    subprocess.run(["gcc", "-O2", "-ffp-contract=off", "-fexcess-precision=16", str(tmp_path / "main.c"), "-o",
                    str(exe), "-lm"], check=True, capture_output=True, timeout=120)
    _check(subprocess.run([str(exe)], capture_output=True, text=True, check=True, timeout=60).stdout, a, b)
