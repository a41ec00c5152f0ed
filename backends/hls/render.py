"""Render an :class:`~edgeq.backends.hls.lower.HwDesign` as Vitis HLS C++.

One function per layer, each in its own translation unit (compiled in parallel), weights and
thresholds as plain integer arrays in per-layer headers, and a top function with m_axi data ports
and an AXI-Lite control port. Comments name the source ONNX nodes. Every C++ type comes from the
layer's formats: integer containers for codes, and ``ap_fixed`` types (``FixedPoint.ctype()``) for
the casts, which are the only place rounding happens.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import numpy as np

from edgeq.backends.hls.lower import BINARY_OPS, HwDesign, HwLayer, HwTensor, container
from edgeq.formats import FixedPoint

TOP = "edgeq_top"


def ap_types_dir() -> Path:
    """The Xilinx ap_types headers shipped inside the installed hls4ml wheel."""
    import hls4ml

    d = Path(hls4ml.__file__).parent / "templates" / "vivado" / "ap_types"
    if not (d / "ap_fixed.h").exists():
        from edgeq.errors import EdgeqError

        raise EdgeqError(f"{d}: ap_types headers not found in the hls4ml installation; reinstall hls4ml")
    return d


def c_name(name: str, prefix: str = "") -> str:
    out = "".join(c if c.isalnum() else "_" for c in name).strip("_")
    return prefix + (out if out and not out[0].isdigit() else "n_" + out)


def _int_ctype_for(lo: int, hi: int) -> str:
    for n in (8, 16, 32, 64):
        if -(1 << (n - 1)) <= lo and hi < (1 << (n - 1)):
            return f"int{n}_t"
    raise ValueError("value range exceeds 64 bits")


def _param_type(lay: HwLayer, key: str) -> str:
    """The integer type of a layer's parameter array (int32_t for an absent bias)."""
    a = lay.params.get(key)
    return "int32_t" if a is None else _int_ctype_for(int(a.min(initial=0)), int(a.max(initial=0)))


def _thr_type(thr: np.ndarray, x_width: int) -> str:
    """Threshold (and compared value) type: it must hold the thresholds and -x for every input code."""
    big = max(abs(int(thr.min())), abs(int(thr.max()))) >= (1 << 30) or x_width > 30
    return "int64_t" if big else "int32_t"


def _array(ctype: str, name: str, a: np.ndarray) -> str:
    """A C array definition, wrapped at commas so every line stays short and valid."""
    flat = np.asarray(a).ravel()
    lines, cur = [], ""
    for v in flat:
        part = f"{int(v)},"
        if len(cur) + len(part) > 110:
            lines.append(cur)
            cur = ""
        cur += part
    lines.append(cur)
    return f"static const {ctype} {name}[{flat.size}] = {{\n" + "\n".join(lines).rstrip(",") + "\n};\n"


def _float_array(name: str, a: np.ndarray) -> str:
    """A float array definition; every literal is the shortest decimal that reads back as the same float32."""
    flat = np.asarray(a, dtype=np.float32).ravel()
    vals = [np.format_float_scientific(v, unique=True) + "f" for v in flat]
    lines = [", ".join(vals[i : i + 6]) for i in range(0, len(vals), 6)]
    return f"static const float {name}[{flat.size}] = {{\n" + ",\n".join(lines) + "\n};\n"


def _word_array(name: str, a: np.ndarray) -> str:
    """A uint64 (edgeq_word_t) array definition in hex, 4 words a line; an empty array gets one 0 word."""
    flat = np.asarray(a, dtype=np.uint64).ravel()
    vals = [f"0x{int(v):016x}ULL" for v in flat] or ["0x0000000000000000ULL"]
    lines = [", ".join(vals[i : i + 4]) for i in range(0, len(vals), 4)]
    return f"static const edgeq_word_t {name}[{len(vals)}] = {{\n" + ",\n".join(lines) + "\n};\n"


class Renderer:
    def __init__(self, design: HwDesign, n_vectors: int = 64):
        self.d = design
        self.n = max(1, int(n_vectors))
        self.tname: dict[str, str] = {}
        for i, t in enumerate(design.tensors.values()):
            self.tname[t.name] = f"t{i}"
        self.lname: dict[str, str] = {}
        used: set[str] = set()
        for lay in design.layers:
            n = c_name(lay.name, "layer_")
            while n in used:
                n += "_"
            used.add(n)
            self.lname[lay.name] = n

    def t(self, name: str) -> HwTensor:
        return self.d.tensors[name]

    def ty(self, name: str) -> str:
        return f"{self.tname[name]}_t"

    # -- files ---------------------------------------------------------------------------------
    def write(self, root: Path) -> dict[str, list[str]]:
        hls = root / "hls"
        (hls / "layers").mkdir(parents=True, exist_ok=True)
        (hls / "weights").mkdir(parents=True, exist_ok=True)
        (hls / "tb").mkdir(parents=True, exist_ok=True)
        templates = resources.files("edgeq.hls_templates")
        for f in ("edgeq_kernels.h", "edgeq_cast.h", "edgeq_xnor.h", "edgeq_minifloat.h"):
            (hls / f).write_text(templates.joinpath(f).read_text())
        shutil.copytree(ap_types_dir(), hls / "ap_types", dirs_exist_ok=True)
        (hls / "edgeq_types.h").write_text(self.types_h())
        (hls / "edgeq_layers.h").write_text(self.layers_h())
        sources, weight_headers = [], []
        for lay in self.d.layers:
            name = self.lname[lay.name]
            weights = self.weights_h(lay)
            if weights:
                (hls / "weights" / f"{name}.h").write_text(weights)
                weight_headers.append(f"hls/weights/{name}.h")
            (hls / "layers" / f"{name}.cpp").write_text(self.layer_cpp(lay, bool(weights)))
            sources.append(f"hls/layers/{name}.cpp")
        (hls / f"{TOP}.h").write_text(self.top_h())
        (hls / f"{TOP}.cpp").write_text(self.top_cpp())
        (hls / "tb" / "tb_edgeq.cpp").write_text(self.tb_cpp())
        sources.insert(0, f"hls/{TOP}.cpp")
        headers = ["hls/edgeq_types.h", "hls/edgeq_layers.h", f"hls/{TOP}.h", "hls/edgeq_kernels.h", "hls/edgeq_cast.h",
                   "hls/edgeq_xnor.h", "hls/edgeq_minifloat.h", *weight_headers]
        return {"sources": sources, "headers": headers, "testbench": "hls/tb/tb_edgeq.cpp",
                "include_dirs": ["hls", "hls/ap_types", "hls/weights"]}

    def types_h(self) -> str:
        out = ["// Code containers of every accelerator tensor (value = code * 2^-F).", "#ifndef EDGEQ_TYPES_H",
               "#define EDGEQ_TYPES_H", "#include <stdint.h>", ""]
        for t in self.d.tensors.values():
            out.append(f"typedef {t.ctype} {self.ty(t.name)};  // {t.name}: {t.format} {list(t.shape)}")
        out += ["", "#endif", ""]
        return "\n".join(out)

    def layers_h(self) -> str:
        out = ["#ifndef EDGEQ_LAYERS_H", "#define EDGEQ_LAYERS_H", '#include "edgeq_types.h"', ""]
        for lay in self.d.layers:
            out.append(self.signature(lay) + ";")
        out += ["", "#endif", ""]
        return "\n".join(out)

    def signature(self, lay: HwLayer) -> str:
        args = [f"const {self.ty(i)} x{k}[{self.t(i).elements}]" for k, i in enumerate(lay.inputs)]
        args.append(f"{self.ty(lay.output)} y[{self.t(lay.output).elements}]")
        return f"void {self.lname[lay.name]}({', '.join(args)})"

    def weights_h(self, lay: HwLayer) -> str:
        name = self.lname[lay.name]
        parts = []
        binary = lay.op in BINARY_OPS
        for key, a in lay.params.items():
            if key == "weight" and "digits" in lay.params:
                continue  # a multiplier-free layer stores its weights as shift-add digits
            if np.asarray(a).dtype == np.uint64:
                parts.append(_word_array(f"{name}_{key}", a))
            elif binary:
                parts.append(_array(self.table_type(lay, key), f"{name}_{key}", a if len(a) else np.zeros(1, int)))
            elif key == "sign":
                parts.append(_array("int8_t", f"{name}_sign", a))
            elif key == "thresholds":
                parts.append(_array(_thr_type(a, self.t(lay.inputs[0]).width), f"{name}_thresholds", a))
            elif np.asarray(a).dtype == np.float32:  # a Rescale's float32 constants
                parts.append(_float_array(f"{name}_{key}", a))
            elif key == "weight" and "w_ctype" in lay.attrs:  # minifloat weights: their bits
                parts.append(_array(lay.attrs["w_ctype"], f"{name}_weight", a))
            else:
                parts.append(_array(_param_type(lay, key), f"{name}_{key}", a))
        if not parts:
            return ""
        guard = name.upper() + "_H"
        src = ", ".join(lay.source)
        head = f"// Parameters of {name} (ONNX: {src}), integer codes.\n"
        inc = "#include <stdint.h>\n"
        if binary:
            head = (f"// Parameters of {name} (ONNX: {src}): {self.binary_doc(lay)}\n"
                    "// Packed words: element i of a row is bit i % 64 of word i / 64, 1 = +1 (see edgeq_xnor.h).\n")
            inc += '#include "edgeq_xnor.h"\n'
        return head + f"#ifndef {guard}\n#define {guard}\n" + inc + "".join(parts) + "#endif\n"

    @staticmethod
    def binary_doc(lay: HwLayer) -> str:
        a = lay.attrs
        if lay.op.startswith("Mst"):
            return (f"MST-reordered XNOR, {a['channels']} channels of K = {a['k']}: {a['roots']} root(s) stored in "
                    f"full, children as D positions and parent signs (sum |D| = {a['diff']}, depth {a['depth']})")
        return f"XNOR-popcount, {a['channels']} channels of K = {a['k']} bits, {a['words']} words each"

    @staticmethod
    def table_type(lay: HwLayer, key: str) -> str:
        """The C type of an MST index table: order and parent (-1 for a root) share one, from the channel count."""
        if key in ("order", "parent"):
            return _int_ctype_for(-1, int(lay.attrs["channels"]))
        return _int_ctype_for(0, int(lay.params[key].max(initial=0)))

    def _acc_type(self, lay: HwLayer) -> str:
        fmt = self.t(lay.output).format
        return "int32_t" if fmt.width <= 31 else "int64_t"

    def _weights(self, lay: HwLayer, name: str) -> tuple[str, str, str, int]:
        """(bias type, weight type, weight array, KD) of a MAC layer: codes, or shift-add digits (KD > 0)."""
        if "digits" in lay.params:
            return _param_type(lay, "bias"), "int8_t", f"{name}_digits", int(lay.attrs["kd"])
        wt = lay.attrs.get("w_ctype") or _param_type(lay, "weight")
        return _param_type(lay, "bias"), wt, f"{name}_weight", 0

    @staticmethod
    def _mf_args(lay: HwLayer) -> str:
        """The XE, XM, WE, WM template arguments: minifloat fields of the input and the weights (0 = integer)."""
        xe, xm = lay.attrs.get("x_mf", (0, 0))
        we, wm = lay.attrs.get("w_mf", (0, 0))
        return f"{xe}, {xm}, {we}, {wm}"

    def layer_cpp(self, lay: HwLayer, has_weights: bool) -> str:
        name = self.lname[lay.name]
        x = self.t(lay.inputs[0])
        y = self.t(lay.output)
        xt, yt = self.ty(x.name), self.ty(y.name)
        a = lay.attrs
        inc = ['#include "edgeq_layers.h"', '#include "edgeq_kernels.h"']
        if has_weights:
            inc.append(f'#include "{name}.h"')
        body: str
        if lay.op == "Conv2d":
            cin, h, w = x.shape
            cout, oh, ow = y.shape
            kh, kw = lay.params["weight"].shape[2:]
            (sh, sw), (dh, dw), (pt, pl, _, _) = a["strides"], a["dilations"], a["pads"]
            has_b = "bias" in lay.params
            bias = f"{name}_bias" if has_b else "(const int32_t*)0"
            bt, wt, warr, kd = self._weights(lay, name)
            body = (f"    edgeq_conv2d<{xt}, {wt}, {bt}, {self._acc_type(lay)}, {yt}, {cin}, {h}, {w}, {cout}, "
                    f"{kh}, {kw}, {sh}, {sw}, {pt}, {pl}, {dh}, {dw}, {a['group']}, {oh}, {ow}, {str(has_b).lower()}, "
                    f"{kd}, {self._mf_args(lay)}>(x0, {warr}, {bias}, y);")
        elif lay.op == "Dense":
            k, n = lay.params["weight"].shape
            has_b = "bias" in lay.params
            bias = f"{name}_bias" if has_b else "(const int32_t*)0"
            bt, wt, warr, kd = self._weights(lay, name)
            p = max(1, min(k, 8))
            body = (f"    edgeq_dense<{xt}, {wt}, {bt}, {self._acc_type(lay)}, {yt}, {k}, {n}, {p}, "
                    f"{str(has_b).lower()}, {kd}, {self._mf_args(lay)}>(x0, {warr}, {bias}, y);")
        elif lay.op in BINARY_OPS:
            inc.append('#include "edgeq_xnor.h"')
            body = self.binary_body(lay, name, xt, yt)
        elif lay.op == "Threshold":
            thr = lay.params["thresholds"]
            c = thr.shape[0]
            hw = x.elements // c
            tt = _thr_type(thr, x.width)
            log2 = max(1, int(a["levels"]).bit_length())
            top, ovf = a.get("minifloat_top", (0, 0))
            mf = f"{y.minifloat_bits}, {top}, {ovf}" if ovf and ovf != top else f"{y.minifloat_bits}"
            body = (f"    edgeq_threshold<{xt}, {tt}, {yt}, {c}, {hw}, {a['levels']}, {log2}, {mf}>"
                    f"(x0, {name}_thresholds, {name}_sign, {a['base']}, y);")
        elif lay.op == "Cast":
            fx_in: FixedPoint = x.format
            fx_out: FixedPoint = a["cast_to"]
            in_fx = FixedPoint(fx_in.width, fx_in.int_bits, fx_in.signed).ctype("hls")
            # ap_fixed's conversion reads the input's bits down to the output's rounding position: where that lies
            # above the input's MSB (an output step far coarser than the input's range) csim aborts ("read bit
            # beyond MSB"). Extending the input by integer bits first is exact and keeps every bit it reads real.
            ext = max(0, fx_in.frac_bits - fx_out.frac_bits + 1 - fx_in.width)
            wide_fx = FixedPoint(fx_in.width + ext, fx_in.int_bits + ext, fx_in.signed).ctype("hls")
            out_int = f"ap_{'' if fx_out.signed else 'u'}int<{fx_out.width}>"
            inc.append('#include "edgeq_cast.h"')
            body = (f"    edgeq_cast<{xt}, {yt}, {in_fx}, {wide_fx}, {fx_in.width}, {fx_out.ctype('hls')}, {out_int}, "
                    f"{fx_out.width}, {x.elements}>(x0, y);")
        elif lay.op == "MaxPool":
            c, h, w = x.shape
            _, oh, ow = y.shape
            (kh, kw), (sh, sw), (pt, pl, _, _) = a["kernel"], a["strides"], a["pads"]
            lowest = x.code_range[0] if not x.minifloat_bits else \
                int(x.format.to_bits(-np.inf if not x.format.saturating else -x.format.max))
            low = "INT64_MIN" if lowest == -(1 << 63) else str(lowest)  # -9223372036854775808 is not a literal
            body = (f"    edgeq_maxpool<{xt}, {c}, {h}, {w}, {kh}, {kw}, {sh}, {sw}, {pt}, {pl}, {oh}, {ow}, "
                    f"{x.minifloat_bits}>(x0, y, ({xt}){low});")
        elif lay.op == "SumPool":
            c, h, w = x.shape
            _, oh, ow = y.shape
            (kh, kw), (sh, sw) = a["kernel"], a["strides"]
            body = f"    edgeq_sumpool<{xt}, {yt}, {c}, {h}, {w}, {kh}, {kw}, {sh}, {sw}, {oh}, {ow}>(x0, y);"
        elif lay.op == "Relu":
            body = f"    edgeq_relu<{xt}, {x.elements}, {x.minifloat_bits}>(x0, y);"
        elif lay.op == "Decode":
            body = f"    edgeq_mf_decode_layer<{xt}, {yt}, {a['E']}, {a['M']}, {x.elements}>(x0, y);"
        elif lay.op == "Rescale":
            c = a["channels"]
            has_b = "fbias" in lay.params
            bias = f"{name}_fbias" if has_b else f"{name}_scale"
            body = (f"    edgeq_rescale<{xt}, {c}, {x.elements // c}, {str(has_b).lower()}, {x.width}>"
                    f"(x0, {name}_scale, {bias}, y);")
        elif lay.op == "Reshape":
            body = f"    edgeq_copy<{xt}, {x.elements}>(x0, y);"
        elif lay.op == "ConstOp":
            ct = _param_type(lay, "const")
            mul = "true" if a["fn"] == "mul" else "false"
            body = (f"    edgeq_const_op<{xt}, {ct}, {yt}, {a['channels']}, {a['inner']}, {mul}, {a['shift_x']}, "
                    f"{a['sign_x']}, {a['sign_c']}>(x0, {name}_const, y);")
        elif lay.op == "Add":
            b = self.t(lay.inputs[1])
            body = (f"    edgeq_add<{xt}, {self.ty(b.name)}, {yt}, {y.elements}, {a['shift_a']}, {a['shift_b']}>"
                    "(x0, x1, y);")
        else:  # pragma: no cover - lower() emits only these ops
            raise ValueError(lay.op)
        head = [f"// {lay.op} {name}: ONNX node(s) {', '.join(lay.source)}",
                f"// in  {x.name}: {x.format} {list(x.shape)}",
                f"// out {y.name}: {y.format} {list(y.shape)}"]
        return "\n".join(head + inc + ["", self.signature(lay) + " {", body, "}", ""])

    def binary_body(self, lay: HwLayer, name: str, xt: str, yt: str) -> str:
        """The call of an XNOR / MST kernel of edgeq_xnor.h."""
        a = lay.attrs
        x, y = self.t(lay.inputs[0]), self.t(lay.output)
        k, nw, shift = a["k"], a["words"], a["shift"]
        if lay.op.endswith("Conv2d"):
            cin, h, w = x.shape
            cout, oh, ow = y.shape
            kh, kw = a["kernel_shape"]
            (sh, sw), (dh, dw), (pt, pl, _, _) = a["strides"], a["dilations"], a["pads"]
            geom = f"{cin}, {h}, {w}, {cout}, {kh}, {kw}, {sh}, {sw}, {pt}, {pl}, {dh}, {dw}, {oh}, {ow}"
        if lay.op == "XnorDense":
            return f"    edgeq_xnor_dense<{xt}, {yt}, {k}, {y.elements}, {nw}, {shift}>(x0, {name}_weight_bits, y);"
        if lay.op == "XnorConv2d":
            return f"    edgeq_xnor_conv2d<{xt}, {yt}, {geom}, {nw}, {shift}>(x0, {name}_weight_bits, y);"
        p = lay.params
        types = ", ".join(self.table_type(lay, key) for key in ("order", "dstart", "dpos"))
        nd, roots = max(1, len(p["dpos"])), len(p["root_bits"])
        sizes = f"{nw}, {roots}, {nd}, {max(1, len(p['dsign']))}, {shift}"
        tables = ", ".join(f"{name}_{key}" for key in ("order", "parent", "dstart", "dpos", "dsign", "root_bits"))
        if lay.op == "MstDense":
            return f"    edgeq_mst_dense<{xt}, {yt}, {types}, {k}, {y.elements}, {sizes}>(x0, {tables}, y);"
        return f"    edgeq_mst_conv2d<{xt}, {yt}, {types}, {geom}, {sizes}>(x0, {tables}, y);"

    def top_h(self) -> str:
        i, o = self.t(self.d.input), self.t(self.d.output)
        return (f"#ifndef EDGEQ_TOP_H\n#define EDGEQ_TOP_H\n#include <stdint.h>\n"
                f"#define EDGEQ_IN_ELEMENTS {i.elements}\n#define EDGEQ_OUT_ELEMENTS {o.elements}\n"
                f"typedef {i.ctype} edgeq_in_t;   // {i.format}\ntypedef {o.ctype} edgeq_out_t;  // {o.format}\n"
                f"void {TOP}(const edgeq_in_t *inp, edgeq_out_t *outp, int n);\n"
                "#ifndef __SYNTHESIS__\nextern const char *edgeq_trace_dir;  // csim only: per-layer traces\n#endif\n"
                "#endif\n")

    def top_cpp(self) -> str:
        d = self.d
        i, o = self.t(d.input), self.t(d.output)
        lines = [f"// {TOP}: generated by edgeq from {d.graph.source_path or d.graph.name}", "#include <stdint.h>",
                 f'#include "{TOP}.h"', '#include "edgeq_layers.h"', "#ifndef __SYNTHESIS__", "#include <cstdio>",
                 "#include <string>", "const char *edgeq_trace_dir = 0;",
                 "static void edgeq_trace(const char *layer, const void *data, size_t bytes) {",
                 "    if (!edgeq_trace_dir) return;",
                 "    std::string path = std::string(edgeq_trace_dir) + \"/\" + layer + \".bin\";",
                 "    FILE *f = std::fopen(path.c_str(), \"ab\");",
                 "    if (f) { std::fwrite(data, 1, bytes, f); std::fclose(f); }", "}",
                 "#define EDGEQ_TRACE(name, buf) edgeq_trace(name, buf, sizeof(buf))", "#else",
                 "#define EDGEQ_TRACE(name, buf)", "#endif", "",
                 f"void {TOP}(const edgeq_in_t *inp, edgeq_out_t *outp, int n) {{",
                 # depth: how many elements C/RTL co-simulation exchanges (all test vectors)
                 f"#pragma HLS INTERFACE m_axi port = inp offset = slave bundle = gmem0 depth = {i.elements * self.n}",
                 f"#pragma HLS INTERFACE m_axi port = outp offset = slave bundle = gmem1 depth = {o.elements * self.n}",
                 "#pragma HLS INTERFACE s_axilite port = inp bundle = control",
                 "#pragma HLS INTERFACE s_axilite port = outp bundle = control",
                 "#pragma HLS INTERFACE s_axilite port = n bundle = control",
                 "#pragma HLS INTERFACE s_axilite port = return bundle = control"]
        for t in d.tensors.values():
            lines.append(f"    static {self.ty(t.name)} {self.tname[t.name]}[{t.elements}];  // {t.name}")
        lines += ["samples:", "    for (int s = 0; s < n; s++) {",
                  f"        for (int k = 0; k < {i.elements}; k++) {{",
                  "#pragma HLS PIPELINE II = 1",
                  f"            {self.tname[i.name]}[k] = inp[s * {i.elements} + k];", "        }"]
        for lay in d.layers:
            args = [self.tname[x] for x in lay.inputs] + [self.tname[lay.output]]
            lines.append(f"        {self.lname[lay.name]}({', '.join(args)});  // {lay.op}: {', '.join(lay.source)}")
            lines.append(f'        EDGEQ_TRACE("{self.lname[lay.name]}", {self.tname[lay.output]});')
        lines += [f"        for (int k = 0; k < {o.elements}; k++) {{", "#pragma HLS PIPELINE II = 1",
                  f"            outp[s * {o.elements} + k] = {self.tname[o.name]}[k];", "        }", "    }", "}", ""]
        return "\n".join(lines)

    def tb_cpp(self) -> str:
        return f"""// C-simulation test bench: tb <input_codes.bin> <n> <output_codes.bin> [trace_dir]
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "{TOP}.h"

int main(int argc, char **argv) {{
    if (argc < 4) {{
        std::fprintf(stderr, "usage: %s input_codes.bin n output_codes.bin [trace_dir]\\n", argv[0]);
        return 2;
    }}
    const int n = std::atoi(argv[2]);
    std::vector<edgeq_in_t> in((size_t)n * EDGEQ_IN_ELEMENTS);
    std::vector<edgeq_out_t> out((size_t)n * EDGEQ_OUT_ELEMENTS);
    FILE *f = std::fopen(argv[1], "rb");
    if (!f || std::fread(in.data(), sizeof(edgeq_in_t), in.size(), f) != in.size()) {{
        std::fprintf(stderr, "cannot read %d input vectors from %s\\n", n, argv[1]);
        return 2;
    }}
    std::fclose(f);
    if (argc > 4) edgeq_trace_dir = argv[4];
    {TOP}(in.data(), out.data(), n);
    f = std::fopen(argv[3], "wb");
    if (!f || std::fwrite(out.data(), sizeof(edgeq_out_t), out.size(), f) != out.size()) return 2;
    std::fclose(f);
    return 0;
}}
"""


def render(design: HwDesign, root: Path, n_vectors: int = 64) -> dict[str, list[str]]:
    """Write the HLS sources into ``root``; returns the build.json ``hls`` section (paths relative to root)."""
    r = Renderer(design, n_vectors)
    info = r.write(root)
    info["cflags"] = ["-O2", "-std=c++14", "-ffp-contract=off"]  # the declared float32 rescale: no fused ops
    info["layer_names"] = {lay.name: r.lname[lay.name] for lay in design.layers}
    return info


__all__ = ["TOP", "ap_types_dir", "c_name", "container", "render", "Renderer"]
