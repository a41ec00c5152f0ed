"""Tool-facing files of an HLS project (edgeq.backends.hls.project): TCL, Makefile, PYNQ driver.

The AMD tools are not installed here, so the TCL scripts run in a real ``tclsh`` in which every
Vitis HLS / Vivado command is an ``unknown`` that records its words. The project is a tiny but real
one written by this test (a 12 -> 4 integer "model" in C++ plus host glue with a float tail), so
``make csim`` runs for real with g++ and the PYNQ driver runs against a simulated board.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest

from edgeq.backends.hls.project import ps_kind, write_tool_files
from edgeq.errors import EdgeqError
from edgeq.formats import FixedPoint, Float32
from edgeq.host import HostGlue
from edgeq.ir import Graph, Layer, Tensor

TOP = "edgeq_top"
IN_SHAPE = (3, 2, 2)
IN_ELEMENTS, OUT_ELEMENTS, COUNT = 12, 4, 8
ULTRA96 = {"name": "ultra96", "part": "xczu3eg-sbva484-1-i", "clock_mhz": 100.0, "description": "Ultra96-V2"}
PYNQ_Z2 = {"name": "pynq-z2", "part": "xc7z020clg400-1", "clock_mhz": 125.0, "description": "PYNQ-Z2"}

needs_tclsh = pytest.mark.skipif(shutil.which("tclsh") is None, reason="tclsh not installed (Makefile APT_PACKAGES)")

SOURCES = {
    "hls/edgeq_top.h": """#pragma once
#include <stdint.h>
void edgeq_top(const int8_t *inp, int32_t *outp, int n);
int32_t dense1(const int8_t *x, int j);
""",
    "hls/layers/dense1.cpp": """#include "edgeq_top.h"
int32_t dense1(const int8_t *x, int j) {
    int32_t s = 0;
    for (int i = 0; i < 12; i++) s += (int32_t)x[i] * (i + 1) * ((j % 2) ? -1 : 1);
    return s + 1000 * j;
}
""",
    "hls/edgeq_top.cpp": """#include "edgeq_top.h"
void edgeq_top(const int8_t *inp, int32_t *outp, int n) {
#pragma HLS INTERFACE m_axi port=inp bundle=gmem0 offset=slave
#pragma HLS INTERFACE m_axi port=outp bundle=gmem1 offset=slave
#pragma HLS INTERFACE s_axilite port=n bundle=control
#pragma HLS INTERFACE s_axilite port=return bundle=control
    for (int s = 0; s < n; s++)
        for (int j = 0; j < 4; j++) outp[s * 4 + j] = dense1(inp + s * 12, j);
}
""",
    "hls/tb/tb_edgeq.cpp": """#include <cstdio>
#include <cstdlib>
#include <vector>
#include "edgeq_top.h"
int main(int argc, char **argv) {
    if (argc < 4) return 2;
    int n = std::atoi(argv[2]);
    std::vector<int8_t> in(n * 12);
    std::vector<int32_t> out(n * 4);
    FILE *f = std::fopen(argv[1], "rb");
    if (!f || std::fread(in.data(), 1, in.size(), f) != in.size()) return 3;
    std::fclose(f);
    edgeq_top(in.data(), out.data(), n);
    FILE *g = std::fopen(argv[3], "wb");
    if (!g || std::fwrite(out.data(), 4, out.size(), g) != out.size()) return 4;
    std::fclose(g);
    return 0;
}
""",
    "hls/ap_types/ap_int.h": "// stand-in for the ap_types headers\n",
}

# What Vitis HLS writes for this signature (xedgeq_top_hw.h), with every offset moved by 0x40 and
# 32-bit pointers, so a driver that ignored the header would fail.
SHIFTED_HEADER = """// ==============================================================
// Vitis HLS - High-Level Synthesis from C, C++ and OpenCL v2023.2 (64-bit)
// ==============================================================
// control
// 0x40 : Control signals
#define XEDGEQ_TOP_CONTROL_ADDR_AP_CTRL   0x40
#define XEDGEQ_TOP_CONTROL_ADDR_GIE       0x44
#define XEDGEQ_TOP_CONTROL_ADDR_IER       0x48
#define XEDGEQ_TOP_CONTROL_ADDR_ISR       0x4c
#define XEDGEQ_TOP_CONTROL_ADDR_INP_DATA  0x50
#define XEDGEQ_TOP_CONTROL_BITS_INP_DATA  32
#define XEDGEQ_TOP_CONTROL_ADDR_OUTP_DATA 0x58
#define XEDGEQ_TOP_CONTROL_BITS_OUTP_DATA 32
#define XEDGEQ_TOP_CONTROL_ADDR_N_DATA    0x60
#define XEDGEQ_TOP_CONTROL_BITS_N_DATA    32
"""


def reference_top(codes: np.ndarray) -> np.ndarray:
    """What the C++ above computes, in numpy: (n, 12) int8 codes -> (n, 4) int32 codes."""
    c = np.asarray(codes, dtype=np.int64).reshape(-1, IN_ELEMENTS)
    w = np.arange(1, IN_ELEMENTS + 1)[:, None] * np.array([1, -1, 1, -1])[None, :]
    return (c @ w + 1000 * np.arange(OUT_ELEMENTS)).astype(np.int32)


def make_glue() -> HostGlue:
    fin = FixedPoint(8, 1, rounding="RND_CONV", overflow="SAT")
    fout = FixedPoint(24, 20)
    prefix = Graph("prefix", ["x"], ["x"], {"x": Tensor("x", IN_SHAPE, fin)}, [])
    tail = Graph("tail", ["acc"], ["y"],
                 {"acc": Tensor("acc", (OUT_ELEMENTS,), fout), "y": Tensor("y", (OUT_ELEMENTS,), Float32())},
                 [Layer("scale", "FloatOp", ["acc"], "y", ["Mul_0"],
                        attrs={"fn": "mul", "const": 0.1, "const_first": False})])
    return HostGlue(prefix, tail, fin, fout, "int8", "int32")


def make_info(board: dict) -> dict:
    return {
        "edgeq_version": "0.1.0",
        "top": TOP,
        "board": dict(board),
        "model": "model.onnx",
        "input": {"shape": list(IN_SHAPE), "elements": IN_ELEMENTS, "ctype": "int8_t", "dtype": "int8",
                  "format": "fixed<8,1,RND_CONV,SAT>"},
        "output": {"shape": [OUT_ELEMENTS], "elements": OUT_ELEMENTS, "ctype": "int32_t", "dtype": "int32",
                   "format": "fixed<24,4,TRN,WRAP>"},
        "hls": {"sources": ["hls/edgeq_top.cpp", "hls/layers/dense1.cpp"], "headers": ["hls/edgeq_top.h"],
                "testbench": "hls/tb/tb_edgeq.cpp", "include_dirs": ["hls", "hls/ap_types"],
                "cflags": ["-O2", "-std=c++14"]},
        "vectors": {"input": "vectors/input.npy", "codes": "vectors/input_codes.bin",
                    "expected": "vectors/expected.npy", "count": COUNT},
        "host": "host",
    }


def make_project(root: Path, board: dict = ULTRA96) -> tuple[Path, dict, list[Path]]:
    """A complete little project directory, as `edgeq build` would leave it, plus the rendered tool files."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in SOURCES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    glue = make_glue()
    glue.save(root / "host")
    x = np.random.default_rng(0).integers(-64, 64, size=(COUNT,) + IN_SHAPE) / 64.0
    codes = glue.encode(x)
    (root / "vectors").mkdir()
    np.save(root / "vectors" / "input.npy", x)
    codes.astype("<i1").tofile(root / "vectors" / "input_codes.bin")
    np.save(root / "vectors" / "expected.npy", glue.decode(reference_top(codes)))
    info = make_info(board)
    (root / "build.json").write_text(json.dumps(info, indent=2))
    return root, info, write_tool_files(root, info)


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path / "proj")


# ---------------------------------------------------------------------------------------------
# TCL under tclsh with recording stand-ins for the Vitis HLS / Vivado commands
# ---------------------------------------------------------------------------------------------

HARNESS = r"""
set script  [lindex $argv 0]
set ::rec   [open [lindex $argv 1] w]
set ::mock  [lindex $argv 2]
proc record {args} { puts $::rec [join $args \x1f] }
proc unknown {cmd args} {
    record $cmd {*}$args
    switch -- $cmd {
        get_property {
            switch -- [lindex $args 0] {
                PROGRESS  { return "100%" }
                DIRECTORY { return [file join $::mock runs impl_1] }
                STATS.WNS { return 0.25 }
                default   { return "" }
            }
        }
        make_wrapper {
            set f [file join $::mock edgeq_bd_wrapper.v]
            close [open $f w]
            return $f
        }
        create_bd_cell - get_bd_cells - get_bd_pins - get_bd_intf_pins - get_files - get_runs - get_ipdefs {
            return [lindex $args end]
        }
        default { return "" }
    }
}
rename source real_source
proc source {args} { record source {*}$args; uplevel 1 real_source {*}$args }
rename exit real_exit
proc exit {{code 0}} { record exit $code; return -code error -errorcode EDGEQ_EXIT "exit $code" }
if {[catch {real_source $script} msg opts] && [dict get $opts -errorcode] ne "EDGEQ_EXIT"} {
    close $::rec
    puts stderr $msg
    real_exit 1
}
close $::rec
real_exit 0
"""

# options that take a value, in the commands that name files
_VALUED = {"-cflags", "-csimflags", "-fileset", "-of_objects", "-encoding", "-library"}


def run_tcl(script: Path, tmp: Path, env: dict | None = None) -> list[list[str]]:
    """Run ``script`` under the recording harness; returns the commands it issued, words split."""
    tmp.mkdir(parents=True, exist_ok=True)
    harness, rec = tmp / "harness.tcl", tmp / "calls.txt"
    harness.write_text(HARNESS)
    res = subprocess.run(["tclsh", str(harness), str(script), str(rec), str(tmp)], capture_output=True, text=True,
                         timeout=30, env={**os.environ, **(env or {})})
    assert res.returncode == 0, res.stderr
    return [line.split("\x1f") for line in rec.read_text().splitlines()]


def named_files(calls: list[list[str]]) -> list[str]:
    """Every file named by add_files / source / read_* (the words that are neither options nor their values)."""
    out = []
    for cmd, *words in calls:
        if cmd in ("add_files", "source") or cmd.startswith("read_"):
            skip = False
            for w in words:
                if skip:
                    skip = False
                elif w in _VALUED:
                    skip = True
                elif not w.startswith("-"):
                    out.append(w)
    return out


def commands(calls, name):
    return [c[1:] for c in calls if c[0] == name]


def option(words: list[str], opt: str) -> str:
    return words[words.index(opt) + 1]


@needs_tclsh
def test_hls_tcl_names_existing_files_and_the_boards_part_and_clock(project, tmp_path):
    root, info, _ = project
    calls = run_tcl(root / "scripts" / "hls.tcl", tmp_path / "tcl")
    order = [c[0] for c in calls]
    steps = ["open_project", "set_top", "add_files", "open_solution", "set_part", "create_clock",
             "csim_design", "csynth_design", "export_design", "exit"]
    assert [order.index(s) for s in steps] == sorted(order.index(s) for s in steps)
    assert order.index("open_solution") > max(i for i, c in enumerate(order) if c == "add_files")
    assert commands(calls, "open_project") == [["-reset", "hls_prj"]]
    assert commands(calls, "set_top") == [[TOP]]
    assert commands(calls, "set_part") == [[ULTRA96["part"]]]
    assert option(commands(calls, "create_clock")[0], "-period") == "10"

    files = named_files(calls)
    assert sorted(files) == sorted(str(root / s) for s in info["hls"]["sources"] + [info["hls"]["testbench"]])
    assert all(Path(f).is_file() for f in files)
    adds = commands(calls, "add_files")
    assert [a[0] for a in adds].count("-tb") == 1
    for a in adds:
        flags = option(a, "-cflags").split()
        assert "-std=c++14" in flags and "-O2" not in flags
        incs = [f[2:] for f in flags if f.startswith("-I")]
        assert incs == [str(root / "hls")]  # not hls/ap_types: Vitis HLS uses its own ap_types
        assert all(Path(d).is_dir() for d in incs)

    (csim,) = commands(calls, "csim_design")
    tb_in, n, tb_out = option(csim, "-argv").split()
    assert Path(tb_in) == root / "vectors" / "input_codes.bin" and Path(tb_in).is_file()
    assert n == str(COUNT) and Path(tb_out).parent.is_dir()
    assert commands(calls, "cosim_design") == []
    (export,) = commands(calls, "export_design")
    assert option(export, "-format") == "ip_catalog"
    assert (option(export, "-vendor"), option(export, "-library"), option(export, "-version")) == (
        "xilinx.com", "hls", "1.0")


@needs_tclsh
def test_hls_tcl_cosim_only_when_asked(project, tmp_path):
    root, _, _ = project
    calls = run_tcl(root / "scripts" / "hls.tcl", tmp_path / "tcl", env={"COSIM": "1", "CSIM": "0"})
    assert commands(calls, "csim_design") == []
    (cosim,) = commands(calls, "cosim_design")
    tb_in, n, tb_out = option(cosim, "-argv").split()
    assert Path(tb_in).is_file() and n == "2" and tb_out.endswith("cosim_output_codes.bin")


def connections(calls) -> list[str]:
    """Every pin or interface pin named by connect_bd_net / connect_bd_intf_net."""
    return [p for cmd in ("connect_bd_net", "connect_bd_intf_net") for w in commands(calls, cmd)
            for word in w for p in word.split()]


def _ps_properties(calls) -> dict[str, str]:
    props = {}
    for words in commands(calls, "set_property"):
        if words[0] == "-dict" and words[-1] == "zynq_ps":
            pairs = words[1].split()
            props.update(zip(pairs[::2], pairs[1::2]))
    return props


def _fake_vivado_outputs(root: Path, mock: Path) -> None:
    """What Vivado would leave behind for the copy step: the run's .bit and the bd's .hwh."""
    (root / "hls_prj/sol1/impl/ip").mkdir(parents=True)
    (root / "hls_prj/sol1/impl/ip/component.xml").write_text("<component/>")
    (mock / "runs" / "impl_1").mkdir(parents=True)
    (mock / "runs" / "impl_1" / "edgeq_bd_wrapper.bit").write_bytes(b"BIT")
    hwh = root / "vivado/edgeq_vivado.gen/sources_1/bd/edgeq_bd/hw_handoff"
    hwh.mkdir(parents=True)
    (hwh / "edgeq_bd.hwh").write_text("<HWH/>")


def _check_vivado(root: Path, board: dict, mock: Path) -> list[list[str]]:
    _fake_vivado_outputs(root, mock)
    calls = run_tcl(root / "scripts" / "vivado.tcl", mock)
    (proj,) = commands(calls, "create_project")
    assert option(proj, "-part") == board["part"] and Path(proj[-3]) == root / "vivado"
    repo = [w for w in commands(calls, "set_property") if w[0] == "ip_repo_paths"]
    assert len(repo) == 1 and (Path(repo[0][1]) / "component.xml").is_file()
    assert all(Path(f).is_file() for f in named_files(calls)) and named_files(calls)

    cells = {w[-1]: option(w, "-vlnv") for w in commands(calls, "create_bd_cell")}
    assert cells[f"{TOP}_0"] == f"xilinx.com:hls:{TOP}:1.0"
    assert {v.split(":")[2] for v in cells.values()} >= {"smartconnect", "proc_sys_reset"}
    # every pin or interface the design connects belongs to a cell it created
    connected = connections(calls)
    assert {p.split("/")[0] for p in connected} <= set(cells), connected
    for pin in ("s_axi_control", "m_axi_gmem0", "m_axi_gmem1", "ap_clk", "ap_rst_n"):
        assert f"{TOP}_0/{pin}" in connected

    order = [c[0] for c in calls]
    flow = ["create_bd_design", "assign_bd_address", "validate_bd_design", "make_wrapper", "launch_runs",
            "wait_on_run"]
    assert [order.index(s) for s in flow] == sorted(order.index(s) for s in flow)
    (launch,) = commands(calls, "launch_runs")
    assert launch[0] == "impl_1" and option(launch, "-to_step") == "write_bitstream"
    assert (root / "out/edgeq.bit").read_bytes() == b"BIT"
    assert (root / "out/edgeq.hwh").read_text() == "<HWH/>"
    return calls


@needs_tclsh
def test_vivado_tcl_zynq_ultrascale_plus(project, tmp_path):
    root, _, _ = project
    calls = _check_vivado(root, ULTRA96, tmp_path / "tcl")
    cells = {w[-1]: option(w, "-vlnv") for w in commands(calls, "create_bd_cell")}
    assert cells["zynq_ps"] == "xilinx.com:ip:zynq_ultra_ps_e"
    p = _ps_properties(calls)
    assert p["CONFIG.PSU__USE__M_AXI_GP0"] == "1" and p["CONFIG.PSU__USE__S_AXI_GP2"] == "1"
    assert p["CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ"] == "100"
    connected = connections(calls)
    for pin in ("zynq_ps/M_AXI_HPM0_FPD", "zynq_ps/S_AXI_HP0_FPD", "zynq_ps/pl_clk0", "zynq_ps/pl_resetn0",
                "zynq_ps/maxihpm0_fpd_aclk", "zynq_ps/saxihp0_fpd_aclk"):
        assert pin in connected
    assert not [w for w in commands(calls, "apply_bd_automation")]


@needs_tclsh
def test_vivado_tcl_zynq_7000(tmp_path):
    root, _, _ = make_project(tmp_path / "proj", PYNQ_Z2)
    hls = run_tcl(root / "scripts" / "hls.tcl", tmp_path / "hls")
    assert commands(hls, "set_part") == [[PYNQ_Z2["part"]]]
    assert option(commands(hls, "create_clock")[0], "-period") == "8"
    calls = _check_vivado(root, PYNQ_Z2, tmp_path / "tcl")
    cells = {w[-1]: option(w, "-vlnv") for w in commands(calls, "create_bd_cell")}
    assert cells["zynq_ps"] == "xilinx.com:ip:processing_system7"
    p = _ps_properties(calls)
    assert p["CONFIG.PCW_USE_S_AXI_HP0"] == "1" and p["CONFIG.PCW_USE_M_AXI_GP0"] == "1"
    assert p["CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ"] == "125"
    (auto,) = commands(calls, "apply_bd_automation")
    assert option(auto, "-rule") == "xilinx.com:bd_rule:processing_system7" and "DDR" in option(auto, "-config")
    connected = connections(calls)
    for pin in ("zynq_ps/M_AXI_GP0", "zynq_ps/S_AXI_HP0", "zynq_ps/FCLK_CLK0", "zynq_ps/FCLK_RESET0_N",
                "zynq_ps/M_AXI_GP0_ACLK", "zynq_ps/S_AXI_HP0_ACLK"):
        assert pin in connected


@needs_tclsh
def test_vivado_tcl_stops_without_the_hls_ip(project, tmp_path):
    root, _, _ = project
    harness = tmp_path / "h.tcl"
    harness.write_text(HARNESS)
    res = subprocess.run(["tclsh", str(harness), str(root / "scripts/vivado.tcl"), str(tmp_path / "c"), str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and "make hls" in res.stderr


def test_ps_kind_and_bad_build_json(tmp_path):
    assert ps_kind("xczu3eg-sbva484-1-i") == ps_kind("xck26-sfvc784-2LV-c") == "zynq_ultra_ps_e"
    assert ps_kind("xczu7ev-ffvc1156-2-e") == "zynq_ultra_ps_e"
    assert ps_kind("xc7z020clg400-1") == "processing_system7"
    with pytest.raises(EdgeqError, match="Zynq"):
        write_tool_files(tmp_path, make_info({**ULTRA96, "part": "xcvu9p-flga2104-2L-e"}))
    with pytest.raises(EdgeqError, match="ps"):
        write_tool_files(tmp_path, make_info({**ULTRA96, "ps": "processing_system7"}))
    bad = make_info(ULTRA96)
    bad["hls"]["sources"] = ["hls/my layer.cpp"]
    with pytest.raises(EdgeqError, match="white space"):
        write_tool_files(tmp_path, bad)
    del bad["vectors"]
    with pytest.raises(EdgeqError, match="build.json"):
        write_tool_files(tmp_path, bad)
    assert not (tmp_path / "Makefile").exists()


# ---------------------------------------------------------------------------------------------
# Makefile
# ---------------------------------------------------------------------------------------------


def make(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-C", str(root), "--no-print-directory", *args], capture_output=True, text=True,
                          timeout=60)


def test_makefile_dry_run_of_every_target(project):
    root, info, _ = project
    dry = {}
    for target in ("csim", "hls", "bitstream", "package", "clean"):
        res = make(root, "-n", target)
        assert res.returncode == 0, (target, res.stderr)
        dry[target] = res.stdout
    gxx = next(line for line in dry["csim"].splitlines() if "-o csim/tb" in line)
    for word in ["-O2", "-std=c++14", "-Ihls", "-Ihls/ap_types", *info["hls"]["sources"], info["hls"]["testbench"]]:
        assert word in gxx.split()
    assert f"./csim/tb vectors/input_codes.bin {COUNT} csim/output_codes.bin" in dry["csim"]
    assert "scripts/check_outputs.py csim/output_codes.bin" in dry["csim"]
    assert "vitis_hls -f scripts/hls.tcl" in dry["hls"]
    assert "vitis_hls -f scripts/hls.tcl" in dry["bitstream"] and "-source scripts/vivado.tcl" in dry["bitstream"]
    assert "tar -C package -czf edgeq_ultra96.tar.gz edgeq_ultra96" in dry["package"]
    assert "rm -rf" in dry["clean"]


def test_make_csim_runs_the_testbench_and_checks_bit_for_bit(project):
    root, _, _ = project
    res = make(root, "csim")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{COUNT} samples, {COUNT * OUT_ELEMENTS} outputs bit-identical" in res.stdout
    expected = np.load(root / "vectors/expected.npy")
    expected[5, 2] = np.nextafter(expected[5, 2], np.inf)  # one ulp in one output
    np.save(root / "vectors/expected.npy", expected)
    res = make(root, "csim")
    assert res.returncode != 0
    assert f"1 of {COUNT * OUT_ELEMENTS} outputs differ" in res.stdout and "sample 5 output 2" in res.stdout


def test_make_says_clearly_when_amd_tools_are_missing(project):
    root, _, _ = project
    res = make(root, "hls", "VITIS_HLS=edgeq-no-such-vitis-hls")
    assert res.returncode == 2 and "'edgeq-no-such-vitis-hls' is not on PATH" in res.stderr
    ip = root / "hls_prj/sol1/impl/ip/component.xml"
    ip.parent.mkdir(parents=True)
    ip.write_text("<component/>")
    os.utime(ip, (ip.stat().st_mtime + 10,) * 2)  # newer than every source: `hls` is up to date
    res = make(root, "bitstream", "VIVADO=edgeq-no-such-vivado")
    assert res.returncode == 2 and "'edgeq-no-such-vivado' is not on PATH" in res.stderr


# ---------------------------------------------------------------------------------------------
# Board package and PYNQ driver, against a simulated board
# ---------------------------------------------------------------------------------------------


def load_module(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the class is created
    spec.loader.exec_module(mod)
    return mod


class FakeBoard:
    """A stand-in ``pynq`` module: the accelerator computes ``reference_top`` when AP_CTRL gets ap_start.

    ``layout`` is the register map the "hardware" really has; the driver must find it.
    """

    def __init__(self, layout: dict, base_address: int):
        self.layout, self.base, self.buffers, self.calls = layout, base_address, {}, []
        self.module = types.ModuleType("pynq")
        self.module.Overlay, self.module.MMIO, self.module.allocate = self.overlay, self.mmio, self.allocate

    def overlay(self, path, download=True):
        assert Path(path).with_suffix(".hwh").exists()
        return types.SimpleNamespace(ip_dict={"zynq_ps": {}, f"{TOP}_0": {"phys_addr": 0xA0000000,
                                                                          "addr_range": 0x10000}})

    def allocate(self, shape, dtype):
        buf = np.zeros(shape, dtype).view(_Buffer)
        buf.device_address = self.base + 0x100000 * (len(self.buffers) + 1)
        self.buffers[buf.device_address] = buf
        return buf

    def mmio(self, base, length):
        board, regs = self, {}
        lay = self.layout

        class MMIO:
            def read(self, offset):
                if offset == lay["ap_ctrl"]:
                    done = regs.pop("done", 0)
                    return 0x4 | done  # idle, and ap_done once (clear on read)
                return regs.get(offset, 0)

            def write(self, offset, value):
                assert 0 <= value < 2**32
                regs[offset] = value
                if offset == lay["ap_ctrl"] and value & 1:
                    def addr(off):
                        return regs[off] | (regs.get(off + 4, 0) << 32 if lay["bits"] == 64 else 0)
                    n = regs[lay["n"]]
                    src, dst = board.buffers[addr(lay["inp"])], board.buffers[addr(lay["outp"])]
                    dst[:n] = reference_top(src[:n])
                    board.calls.append(n)
                    regs["done"] = 0x2

        return MMIO()


class _Buffer(np.ndarray):
    def flush(self):
        pass

    def invalidate(self):
        pass

    def freebuffer(self):
        pass


def test_driver_pure_functions(project):
    root, _, _ = project
    drv = load_module(root / "driver/edgeq_driver.py", "edgeq_driver_pure")
    r = drv.parse_register_header(SHIFTED_HEADER)
    assert (r.ap_ctrl, r.inp, r.outp, r.n, r.inp_bits, r.outp_bits) == (0x40, 0x50, 0x58, 0x60, 32, 32)
    d = drv.DEFAULT_REGISTERS
    assert (d.ap_ctrl, d.inp, d.outp, d.n, d.inp_bits) == (0x00, 0x10, 0x1C, 0x28, 64)
    assert drv.load_registers() == d  # no header next to the driver
    with pytest.raises(ValueError, match="XEDGEQ_TOP_CONTROL_ADDR_N_DATA"):
        drv.parse_register_header(SHIFTED_HEADER.replace("ADDR_N_DATA", "ADDR_M_DATA"))
    with pytest.raises(ValueError):
        drv.parse_register_header(SHIFTED_HEADER, top="other_top")
    assert [(s.start, s.stop) for s in drv.batch_slices(10, 4)] == [(0, 4), (4, 8), (8, 10)]
    assert drv.batch_slices(0, 4) == [] and len(drv.batch_slices(4, 4)) == 1
    with pytest.raises(ValueError):
        drv.batch_slices(3, 0)
    assert drv.find_ip({"zynq_ps": {}, "edgeq_top_1": {}, "edgeq_top_0": {}}) == "edgeq_top_0"
    assert drv.find_ip({"hier/edgeq_top_2": {}}) == "hier/edgeq_top_2"
    with pytest.raises(ValueError, match="zynq_ps"):
        drv.find_ip({"zynq_ps": {}})
    writes = []
    drv.write_address(types.SimpleNamespace(write=lambda o, v: writes.append((o, v))), 0x10, 0x8_1234_5678)
    assert writes == [(0x10, 0x12345678), (0x14, 0x8)]
    with pytest.raises(ValueError):
        drv.write_address(types.SimpleNamespace(write=lambda o, v: None), 0x10, 2**32, bits=32)
    assert (drv.IN_DTYPE, drv.OUT_DTYPE, drv.IN_SHAPE, drv.IN_ELEMENTS) == (np.int8, np.int32, IN_SHAPE, IN_ELEMENTS)
    assert "pynq" not in sys.modules
    assert os.access(root / "driver/run_on_board.py", os.X_OK)


def test_accelerator_default_layout_batches_on_simulated_board(project, monkeypatch):
    root, _, _ = project
    (root / "out").mkdir()
    (root / "out/edgeq.bit").write_bytes(b"BIT")
    (root / "out/edgeq.hwh").write_text("<HWH/>")
    board = FakeBoard({"ap_ctrl": 0x00, "inp": 0x10, "outp": 0x1C, "n": 0x28, "bits": 64}, base_address=0x8_0000_0000)
    monkeypatch.setitem(sys.modules, "pynq", board.module)
    drv = load_module(root / "driver/edgeq_driver.py", "edgeq_driver_default")
    x = np.load(root / "vectors/input.npy")
    with drv.EdgeqAccelerator(host_dir=root / "host", batch=3) as acc:  # bit file found in out/
        y = acc.run(x)
        codes = acc.run_codes(acc.glue.encode(x[:2]))
    assert board.calls == [3, 3, 2, 2]
    np.testing.assert_array_equal(codes, reference_top(acc.glue.encode(x[:2])))
    assert y.dtype == np.float64 and np.array_equal(y, np.load(root / "vectors/expected.npy"))


def test_package_then_run_on_board_with_the_exported_register_map(project, tmp_path, monkeypatch):
    root, _, _ = project
    ip = root / "hls_prj/sol1/impl/ip"
    (ip / "drivers/edgeq_top_v1_0/src").mkdir(parents=True)
    (ip / "drivers/edgeq_top_v1_0/src/xedgeq_top_hw.h").write_text(SHIFTED_HEADER)
    (ip / "component.xml").write_text("<component/>")
    (root / "out").mkdir()
    (root / "out/edgeq.bit").write_bytes(b"BIT")
    (root / "out/edgeq.hwh").write_text("<HWH/>")
    later = (ip / "component.xml").stat().st_mtime + 10
    os.utime(ip / "component.xml", (later, later))
    for f in ("out/edgeq.bit", "out/edgeq.hwh"):
        os.utime(root / f, (later + 10, later + 10))
    res = make(root, "package")
    assert res.returncode == 0, res.stdout + res.stderr

    with tarfile.open(root / "edgeq_ultra96.tar.gz") as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path / "board", filter="data")
    pkg = tmp_path / "board" / "edgeq_ultra96"
    for rel in ("out/edgeq.bit", "out/edgeq.hwh", "driver/edgeq_driver.py", "driver/run_on_board.py",
                "driver/xedgeq_top_hw.h", "driver/edgeq/host.py", "driver/edgeq/emulate.py", "host/glue.json",
                "host/tail.npz", "vectors/input.npy", "vectors/expected.npy", "build.json"):
        assert f"edgeq_ultra96/{rel}" in names, rel
    assert not [n for n in names if "__pycache__" in n]

    # The board has numpy but none of edgeq's heavy dependencies: the vendored copy must do.
    probe = ("import sys\n"
             "for m in ('onnx', 'onnxruntime', 'qonnx', 'torch', 'brevitas', 'click', 'rich', 'sklearn', 'scipy'):\n"
             "    sys.modules[m] = None\n"
             "sys.path.insert(0, 'driver')\n"
             "import numpy as np, edgeq\n"
             "from edgeq.host import HostGlue\n"
             "assert 'driver' in edgeq.__file__.split('/'), edgeq.__file__\n"
             "print(HostGlue.load('host').decode(np.zeros((1, 4), np.int32)).shape)\n")
    res = subprocess.run([sys.executable, "-c", probe], cwd=pkg, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and res.stdout.strip() == "(1, 4)", res.stderr

    board = FakeBoard({"ap_ctrl": 0x40, "inp": 0x50, "outp": 0x58, "n": 0x60, "bits": 32}, base_address=0x3000_0000)
    monkeypatch.setitem(sys.modules, "pynq", board.module)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(pkg / "driver"))
    monkeypatch.delitem(sys.modules, "edgeq_driver", raising=False)
    rob = load_module(pkg / "driver/run_on_board.py", "run_on_board_pkg")
    assert rob.main(["--batch", "5"]) == 0  # default inputs, bit file, host dir; compares with expected.npy
    assert board.calls == [5, 3]
    hw = np.load(tmp_path / "hw_outputs.npy")
    assert hw.dtype == np.float64 and np.array_equal(hw, np.load(pkg / "vectors/expected.npy"))
    np.save(tmp_path / "wrong.npy", np.zeros((2, 12)))
    assert rob.main(["--inputs", str(tmp_path / "wrong.npy"), "--out", str(tmp_path / "w.npy")]) == 2
    assert not (tmp_path / "w.npy").exists()
    sys.modules.pop("edgeq_driver", None)
