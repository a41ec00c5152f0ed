"""The tool-facing files of a generated HLS project: Vitis HLS and Vivado TCL, Makefile, PYNQ driver.

:func:`write_tool_files` renders the templates in ``edgeq.hls_templates`` (plain text with
``@NAME@`` placeholders; ``$`` stays free for TCL and make) from the project's ``build.json``
content. Every path the rendered files use is relative to the project directory (the TCL scripts
resolve them from ``[info script]``), because the build writes the project into a temporary
directory and renames it into place afterwards.

The generated project::

    scripts/hls.tcl          Vitis HLS: csim on the vectors, csynth, optional cosim, IP-catalog export
    scripts/vivado.tcl       Vivado: block design with the Zynq PS, bitstream, out/edgeq.bit + out/edgeq.hwh
    scripts/check_outputs.py compares test-bench output codes with vectors/expected.npy bit for bit
    Makefile                 csim (g++ only), hls, bitstream, package, clean
    driver/edgeq_driver.py   PYNQ driver (EdgeqAccelerator); driver/run_on_board.py its command line
    driver/edgeq/            numpy-only copy of the edgeq package, so the board needs no edgeq install
"""

from __future__ import annotations

import re
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from edgeq.errors import EdgeqError

HLS_PROJECT = "hls_prj"
HLS_SOLUTION = "sol1"
IP_VENDOR, IP_LIBRARY, IP_VERSION = "xilinx.com", "hls", "1.0"
BD_NAME = "edgeq_bd"
DEFAULT_BATCH = 256
# include directories Vitis HLS must not see: it ships its own (matching) ap_int/ap_fixed headers
TOOL_PROVIDED_INCLUDES = ("ap_types",)
COSIM_SAMPLES = 2

# template in edgeq.hls_templates -> rendered file in the project, in the order write_tool_files returns them
OUTPUTS = {
    "hls.tcl.in": "scripts/hls.tcl",
    "vivado.tcl.in": "scripts/vivado.tcl",
    "Makefile.in": "Makefile",
    "edgeq_driver.py.in": "driver/edgeq_driver.py",
    "run_on_board.py.in": "driver/run_on_board.py",
    "check_outputs.py.in": "scripts/check_outputs.py",
}
_EXECUTABLE = {"driver/run_on_board.py", "scripts/check_outputs.py"}

# Processing systems: Zynq UltraScale+ MPSoC (and the Kria K26/K24 SOMs) vs Zynq-7000.
_PS_BY_PREFIX = (
    (("xczu", "xazu", "xck26", "xck24"), "zynq_ultra_ps_e"),
    (("xc7z", "xa7z"), "processing_system7"),
)
_PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
# Paths and flags go unquoted into make and into Vitis HLS -cflags/-argv strings.
_UNSAFE = re.compile(r"[\s$\"'`\\{}\[\];#&|<>()*?]")


def ps_kind(part: str) -> str:
    """``zynq_ultra_ps_e`` or ``processing_system7`` for an FPGA part; EdgeqError for other devices."""
    p = part.lower()
    for prefixes, kind in _PS_BY_PREFIX:
        if p.startswith(prefixes):
            return kind
    raise EdgeqError(f"part {part}: not a Zynq-7000 (xc7z*) or Zynq UltraScale+ (xczu*, xck26*) device; "
                     "the generated Vivado project needs a Zynq processing system")


def render(template: str, values: dict[str, Any]) -> str:
    """Replace every ``@NAME@`` in ``template``; a placeholder without a value is a KeyError."""

    def sub(m: re.Match) -> str:
        if m.group(1) not in values:
            raise KeyError(f"template placeholder @{m.group(1)}@ has no value")
        return str(values[m.group(1)])

    return _PLACEHOLDER.sub(sub, template)


def read_template(name: str) -> str:
    return resources.files("edgeq.hls_templates").joinpath(name).read_text()


def tcl_word(s: str) -> str:
    """``s`` as one brace-quoted Tcl word (no substitution inside)."""
    s = str(s)
    if any(c in s for c in "{}\\\n"):
        raise EdgeqError(f"{s!r}: braces, backslashes and newlines are not allowed in a generated TCL value")
    return "{" + s + "}"


def tcl_list(items: list[str]) -> str:
    return " ".join(tcl_word(i) for i in items)


def _safe(kind: str, value: str) -> str:
    value = str(value)
    if not value or _UNSAFE.search(value):
        raise EdgeqError(f"build.json {kind} {value!r}: empty or contains white space or shell/TCL/make "
                         "special characters; rename it")
    return value


def _safe_path(kind: str, value: str) -> str:
    p = Path(_safe(kind, value))
    if p.is_absolute() or ".." in p.parts:
        raise EdgeqError(f"build.json {kind} {value!r}: must be relative to the project directory")
    return p.as_posix()


def _num(x: float) -> str:
    """A clock or period as TCL/make understand it: 100.0 -> '100', 1000/150 -> '6.66667'."""
    return f"{float(x):.6g}"


def template_values(info: dict) -> dict[str, Any]:
    """The placeholder values for ``info`` (the content of build.json); validates what it uses."""
    try:
        board, hls, vec = info["board"], info["hls"], info["vectors"]
        inp, out = info["input"], info["output"]
        top = _safe("top", info["top"])
        part = _safe("board.part", board["part"])
        clock = float(board["clock_mhz"])
        sources = [_safe_path("hls.sources", s) for s in hls["sources"]]
        headers = [_safe_path("hls.headers", s) for s in hls.get("headers", [])]
        testbench = _safe_path("hls.testbench", hls["testbench"])
        include_dirs = [_safe_path("hls.include_dirs", d) for d in hls.get("include_dirs", [])]
        cflags = [_safe("hls.cflags", f) for f in hls.get("cflags", [])]
        codes = _safe_path("vectors.codes", vec["codes"])
        count = int(vec["count"])
        board_name = _safe("board.name", board["name"])
    except (KeyError, TypeError, ValueError) as e:
        raise EdgeqError(f"build.json: missing or malformed entry ({e!r}); rebuild with edgeq build") from None
    if not re.fullmatch(r"[A-Za-z_]\w*", top):
        raise EdgeqError(f"build.json top {top!r}: not a C identifier")
    if not sources:
        raise EdgeqError("build.json hls.sources is empty; nothing to synthesise")
    if not clock > 0 or count < 1:
        raise EdgeqError(f"build.json: clock_mhz {clock} and vectors.count {count} must be positive")
    kind = ps_kind(part)
    if board.get("ps", kind) != kind:
        raise EdgeqError(f"board {board_name}: ps = {board['ps']!r}, but part {part} has a {kind}")
    python = sys.executable if sys.executable and not _UNSAFE.search(sys.executable) else ""
    return {
        "EDGEQ_VERSION": info.get("edgeq_version", "?"),
        "TOP": top,
        "TOP_TCL": tcl_word(top),
        "BOARD": board_name,
        "PART": part,
        "PART_TCL": tcl_word(part),
        "CLOCK_MHZ": _num(clock),
        "PERIOD_NS": _num(1000.0 / clock),
        "PS_KIND": kind,
        "BD_NAME": BD_NAME,
        "HLS_PROJECT": HLS_PROJECT,
        "HLS_SOLUTION": HLS_SOLUTION,
        "IP_VENDOR": IP_VENDOR,
        "IP_LIBRARY": IP_LIBRARY,
        "IP_VERSION": IP_VERSION,
        "IP_VLNV": f"{IP_VENDOR}:{IP_LIBRARY}:{top}:{IP_VERSION}",
        "SOURCES": " ".join(sources),
        "SOURCES_TCL": tcl_list(sources),
        "HEADERS": " ".join(headers),
        "TESTBENCH": testbench,
        "TESTBENCH_TCL": tcl_word(testbench),
        "INCLUDES": " ".join(f"-I{d}" for d in include_dirs),
        # Vitis HLS brings its own ap_types; the copy from the hls4ml wheel is for g++ builds only
        "INCLUDE_DIRS_TCL": tcl_list([d for d in include_dirs if Path(d).name not in TOOL_PROVIDED_INCLUDES]),
        "CFLAGS": " ".join(cflags),
        # csim_design -O optimises the C simulation; -O levels do not belong in the synthesis flags
        "CFLAGS_TCL": tcl_list([f for f in cflags if not f.startswith("-O")]),
        "INPUT_CODES": codes,
        "INPUT_CODES_TCL": tcl_word(codes),
        "VECTOR_COUNT": count,
        "COSIM_N": min(count, COSIM_SAMPLES),
        "PYTHON": python or "python3",
        "IN_CTYPE": inp["ctype"],
        "OUT_CTYPE": out["ctype"],
        "IN_DTYPE": inp["dtype"],
        "OUT_DTYPE": out["dtype"],
        "IN_SHAPE": repr(tuple(int(d) for d in inp["shape"])),
        "IN_ELEMENTS": int(inp["elements"]),
        "OUT_ELEMENTS": int(out["elements"]),
        "DEFAULT_BATCH": DEFAULT_BATCH,
    }


def vendor_edgeq(dest: Path) -> list[Path]:
    """Copy the installed edgeq package's ``*.py`` into ``dest`` (replacing it); returns the copies."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    written = []
    for entry in sorted(resources.files("edgeq").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".py") and entry.is_file():
            target = dest / entry.name
            target.write_bytes(entry.read_bytes())
            written.append(target)
    return written


def write_tool_files(out_dir: Path, info: dict) -> list[Path]:
    """Render scripts/hls.tcl, scripts/vivado.tcl, Makefile, driver/edgeq_driver.py and driver/run_on_board.py
    into ``out_dir`` (the project directory holding build.json's files); return the paths.

    Also writes scripts/check_outputs.py (the bit-for-bit check ``make csim``/``make hls`` run) and the
    vendored copy of edgeq in driver/edgeq/. Returns every path written: the five files above first,
    in that order, then scripts/check_outputs.py, then the vendored modules.
    """
    out_dir = Path(out_dir)
    values = template_values(info)
    written = []
    for template, rel in OUTPUTS.items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(read_template(template), values))
        if rel in _EXECUTABLE:
            path.chmod(0o755)
        written.append(path)
    written += vendor_edgeq(out_dir / "driver" / "edgeq")
    return written
