"""The pre-synthesis FPGA resource estimate (edgeq.backends.hls.cost) and the FPGA board files."""

from __future__ import annotations

import math
from importlib import resources

import pytest

from edgeq.backends.hls import cost
from edgeq.board import get_board, list_boards
from edgeq.errors import EdgeqError


def layer(**kw) -> dict:
    """A hardware-layer dict as the lowering produces it, with small defaults (buffers stay in LUTRAM)."""
    base = {
        "name": "L",
        "op": "Dense",
        "in_bits": 4,
        "w_bits": 4,
        "acc_bits": 16,
        "out_bits": 4,
        "macs": 64,
        "weights": 64,
        "weight_bits": 256,
        "in_elements": 8,
        "out_elements": 8,
        "channels": 8,
        "levels": 0,
        "parallel": 1,
        "kernel": None,
    }
    base.update(kw)
    if "weight_bits" not in kw:
        base["weight_bits"] = base["weights"] * base["w_bits"]
    return base


# ---------------------------------------------------------------------------------------------- boards

FPGA_BOARDS = {"ultra96", "pynq-z2", "zcu104", "kv260"}

# Data-sheet counts (DS891 Zynq UltraScale+ MPSoC overview, DS190 Zynq-7000 overview, Kria K26 docs).
DATASHEET = {
    "ultra96": {"part": "xczu3eg-sbva484-1-i", "dsp": 360, "lut": 70560, "ff": 141120, "bram36": 216},
    "pynq-z2": {"part": "xc7z020clg400-1", "dsp": 220, "lut": 53200, "ff": 106400, "bram36": 140},
    "zcu104": {"part": "xczu7ev-ffvc1156-2-e", "dsp": 1728, "lut": 230400, "ff": 460800, "bram36": 312, "uram": 96},
    "kv260": {"part": "xck26-sfvc784-2LV-c", "dsp": 1248, "lut": 117120, "ff": 234240, "bram36": 144, "uram": 64},
}


def test_every_fpga_board_loads_with_required_fields_and_positive_resources():
    boards = {b.name: b for b in list_boards() if b.kind == "fpga"}
    assert FPGA_BOARDS <= set(boards)
    for name, b in boards.items():
        for key in ("name", "description", "kind", "part", "clock_mhz", "ps", "resources"):
            assert key in b.data, f"{name}: missing {key}"
        assert b["name"] == name and b.description
        assert b["clock_mhz"] > 0
        assert b["ps"] in ("zynq_ultra_ps_e", "processing_system7")
        res = b["resources"]
        for r in ("dsp", "lut", "ff", "bram36"):
            assert isinstance(res[r], int) and res[r] > 0, f"{name}: resources.{r}={res.get(r)!r}"
        if "uram" in res:
            assert isinstance(res["uram"], int) and res["uram"] > 0


def test_zcu104_and_kv260_parts():
    assert get_board("zcu104")["part"] == "xczu7ev-ffvc1156-2-e"
    assert get_board("kv260")["part"] == "xck26-sfvc784-2LV-c"


@pytest.mark.parametrize("name", sorted(DATASHEET))
def test_board_resources_match_the_data_sheets(name):
    b = get_board(name)
    want = DATASHEET[name]
    assert b["part"] == want["part"]
    assert {r: b["resources"].get(r) for r in want if r != "part"} == {r: v for r, v in want.items() if r != "part"}
    # Both Zynq fabrics have two flip-flops per 6-input LUT (UG474, UG574): a cheap typo check.
    assert b["resources"]["ff"] == 2 * b["resources"]["lut"]
    # UltraRAM exists only in some UltraScale+ parts; never in Zynq-7000 or the ZU3EG.
    assert ("uram" in b["resources"]) == ("uram" in want)


@pytest.mark.parametrize("name", sorted(FPGA_BOARDS))
def test_board_file_states_where_its_numbers_come_from(name):
    text = (resources.files("edgeq.boards") / f"{name}.toml").read_text()
    comments = " ".join(line for line in text.splitlines() if line.startswith("#"))
    assert "Resources:" in comments
    assert any(src in comments for src in ("DS891", "DS190", "Kria"))


@pytest.mark.parametrize(
    "name, ps, dsp_slice",
    [
        ("ultra96", "zynq_ultra_ps_e", "DSP48E2"),
        ("zcu104", "zynq_ultra_ps_e", "DSP48E2"),
        ("kv260", "zynq_ultra_ps_e", "DSP48E2"),
        ("pynq-z2", "processing_system7", "DSP48E1"),
    ],
)
def test_processing_system_and_dsp_slice_follow_the_family(name, ps, dsp_slice):
    b = get_board(name)
    assert b["ps"] == ps
    assert cost.dsp_slice_of(b) == dsp_slice


def test_an_mcu_board_has_no_fpga_budget():
    with pytest.raises(EdgeqError, match="not an FPGA board"):
        cost.estimate([layer()], get_board("qemu-rv32"))


# ---------------------------------------------------------------------------------------------- products


@pytest.mark.parametrize(
    "a, b, impl",
    [
        (1, 1, "xnor"),
        (1, 16, "negate"),
        (24, 1, "negate"),
        (2, 2, "fabric"),
        (4, 8, "fabric"),
        (5, 8, "fabric"),  # a*b = 40: still fabric
        (8, 5, "fabric"),
        (6, 6, "fabric"),
        (4, 10, "fabric"),  # max = 10, a*b = 40: the corner of the fabric region
        (6, 7, "dsp"),  # a*b = 42 > 40
        (6, 8, "dsp"),
        (8, 8, "dsp"),
        (2, 11, "dsp"),  # max = 11 > 10
        (11, 2, "dsp"),
        (3, 14, "dsp"),
        (0, 8, "none"),
    ],
)
def test_products_cross_the_dsp_threshold_exactly_where_documented(a, b, impl):
    assert cost.multiplier_impl(a, b) == impl
    assert cost.DSP_MAX_FABRIC_WIDTH == 10 and cost.DSP_MAX_FABRIC_PRODUCT == 40


def test_dense_layer_gains_one_dsp_per_lane_when_the_product_crosses_the_threshold():
    # no input buffer (in_elements=0), so only the products differ between the two layers
    below = cost.estimate_layer(layer(in_bits=5, w_bits=8, parallel=8, in_elements=0))
    above = cost.estimate_layer(layer(in_bits=6, w_bits=8, parallel=8, in_elements=0))
    assert below["dsp"] == 0
    assert above["dsp"] == 8
    # the product leaves the fabric: the layer's LUTs drop by the 8 fabric multipliers (5*8 + 5 + 8 LUT each)
    assert below["lut"] - above["lut"] == 8 * (5 * 8 + 5 + 8)
    assert below["ff"] - above["ff"] == 8 * (5 + 8)


@pytest.mark.parametrize(
    "a, b, slice_, tiles",
    [
        (8, 8, "DSP48E2", 1),
        (16, 16, "DSP48E2", 1),
        (27, 18, "DSP48E2", 1),
        (18, 27, "DSP48E2", 1),  # operands swapped onto the 27-bit port
        (28, 18, "DSP48E2", 2),
        (27, 19, "DSP48E2", 2),
        (32, 32, "DSP48E2", 4),
        (25, 18, "DSP48E1", 1),
        (26, 18, "DSP48E1", 2),
        (27, 18, "DSP48E1", 2),
        (32, 32, "DSP48E1", 4),
    ],
)
def test_wide_products_tile_over_several_dsp_slices(a, b, slice_, tiles):
    assert cost.dsp_tiles(a, b, slice_) == tiles
    assert cost.multiplier_cost(a, b, dsp_slice=slice_)["dsp"] == tiles


def test_the_board_decides_the_dsp_slice_used_for_tiling():
    wide = layer(name="wide", in_bits=26, w_bits=18, acc_bits=48, parallel=4)
    assert cost.estimate([wide], get_board("ultra96"))["totals"]["dsp"] == 4  # 26x18 fits one DSP48E2
    assert cost.estimate([wide], get_board("pynq-z2"))["totals"]["dsp"] == 8  # but needs two DSP48E1


def test_binary_and_multiplier_free_layers_use_no_dsp():
    for lay in (
        layer(in_bits=1, w_bits=1, parallel=256),
        layer(in_bits=16, w_bits=1, parallel=256),
        layer(in_bits=16, w_bits=8, parallel=256, shift_add=True),
    ):
        assert cost.estimate_layer(lay)["dsp"] == 0
    xnor = cost.estimate_layer(layer(in_bits=1, w_bits=1, acc_bits=10, parallel=32))
    fabric2 = cost.estimate_layer(layer(in_bits=2, w_bits=2, acc_bits=10, parallel=32))
    assert xnor["lut"] < fabric2["lut"]


# ---------------------------------------------------------------------------------------------- monotonicity


MONOTONE_LAYERS = [
    layer(name="conv8", op="Conv2d", in_bits=8, w_bits=8, acc_bits=24, weights=4608, in_elements=4096, kernel=[3, 3]),
    layer(name="dense2", in_bits=2, w_bits=2, acc_bits=16, weights=65536, in_elements=1024),
    layer(name="dense1", in_bits=1, w_bits=1, acc_bits=12, weights=65536, in_elements=1024),
    layer(name="dense16", in_bits=16, w_bits=16, acc_bits=40, weights=4096, in_elements=256),
    layer(name="thr", op="Threshold", in_bits=16, w_bits=0, acc_bits=16, out_bits=2, weights=0, channels=64, levels=3,
          in_elements=4096),
    layer(name="pool", op="MaxPool", in_bits=4, w_bits=0, weights=0, in_elements=4096, kernel=[2, 2]),
]


@pytest.mark.parametrize("base", MONOTONE_LAYERS, ids=lambda lay: lay["name"])
def test_more_parallel_never_costs_less_dsp_lut_or_ff(base):
    rows = [cost.estimate_layer({**base, "parallel": p}) for p in (1, 2, 4, 8, 16, 32, 64)]
    for small, big in zip(rows, rows[1:]):
        assert big["dsp"] >= small["dsp"]
        assert big["lut"] > small["lut"]
        assert big["ff"] >= small["ff"]
    if cost.multiplier_impl(base["in_bits"], base["w_bits"]) == "dsp":
        assert [r["dsp"] for r in rows] == [p * rows[0]["dsp"] for p in (1, 2, 4, 8, 16, 32, 64)]


def test_wider_multipliers_never_cost_fewer_dsps():
    prev = 0
    for bits in range(1, 40):
        dsp = cost.estimate_layer(layer(in_bits=bits, w_bits=bits, acc_bits=2 * bits + 8, parallel=4))["dsp"]
        assert dsp >= prev
        prev = dsp
    assert prev > 4  # 39x39 needs more than one slice per lane


# ---------------------------------------------------------------------------------------------- memories


def test_bram_versus_lutram_at_the_1024_bit_boundary():
    assert cost.BRAM_MIN_BITS == 1024
    small = cost.memory_cost(1023, 1)
    assert small["kind"] == "lutram" and small["lut"] == 16 and small["bram36"] == 0
    big = cost.memory_cost(1024, 1)
    assert big["kind"] == "bram" and big["lut"] == 0 and big["bram36"] == 0.5
    assert cost.memory_cost(127, 8)["kind"] == "lutram"
    assert cost.memory_cost(128, 8) == {"kind": "bram", "lut": 0, "bram36": 0.5, "partitions": 1, "depth": 128}


def test_weight_rom_maps_per_partition_at_the_boundary():
    # 8 lanes -> 8 weight banks; 8 x 128 x 8 bit = 1024 bits per bank -> one RAMB18 each
    at = cost.estimate_layer(layer(w_bits=8, weights=8 * 128, parallel=8))
    under = cost.estimate_layer(layer(w_bits=8, weights=8 * 127, parallel=8))
    assert at["bram36"] == 8 * 0.5
    assert under["bram36"] == 0
    assert under["lut"] - at["lut"] == 8 * 8 * 2  # 8 banks x 8 bits x ceil(127/64) LUTRAM
    # the same 1024 weights in one bank of 8192 bits: still one RAMB18 (8Kx1... 1Kx18 -> 2048x9 holds it)
    assert cost.estimate_layer(layer(w_bits=8, weights=1024, parallel=1))["bram36"] == 0.5


@pytest.mark.parametrize(
    "depth, width, bram36",
    [
        (4096, 9, 1.0),  # RAMB36 4Kx9
        (2048, 18, 1.0),
        (512, 72, 1.0),
        (32768, 1, 1.0),
        (2048, 9, 0.5),  # one RAMB18
        (512, 36, 0.5),
        (32769, 1, 1.5),  # three RAMB18 16Kx1 beat two RAMB36 32Kx1
        (512, 73, 1.5),
        (1024, 37, 1.5),
    ],
)
def test_block_ram_count_is_width_and_depth_aware(depth, width, bram36):
    assert cost.memory_cost(depth, width)["bram36"] == bram36


def test_block_ram_never_holds_fewer_bits_than_its_capacity():
    for width in (1, 2, 3, 4, 5, 8, 9, 12, 16, 18, 24, 32, 36, 48, 72, 100):
        for depth in (16, 100, 128, 500, 1000, 1024, 3000, 5000, 20000, 70000):
            for parts in (1, 3, 8):
                m = cost.memory_cost(depth, width, parts)
                per_bank = math.ceil(depth / m["partitions"]) * width
                if m["kind"] == "bram":
                    assert m["bram36"] >= m["partitions"] * per_bank / cost.BRAM36_BITS
                    assert per_bank >= cost.BRAM_MIN_BITS
                else:
                    assert m["lut"] * cost.LUTRAM_BITS >= m["partitions"] * per_bank
                    assert per_bank < cost.BRAM_MIN_BITS


def test_add_buffers_both_inputs_and_reshape_is_free():
    relu = cost.estimate_layer(layer(op="Relu", w_bits=0, weights=0, in_bits=8, in_elements=4096))
    add = cost.estimate_layer(layer(op="Add", w_bits=0, weights=0, in_bits=8, in_elements=4096))
    assert relu["bram36"] > 0 and add["bram36"] == 2 * relu["bram36"]
    free = cost.estimate_layer(layer(op="Reshape", w_bits=0, weights=0, in_elements=4096))
    assert (free["dsp"], free["lut"], free["ff"], free["bram36"]) == (0, 0, 0, 0.0)


def test_thresholds_are_stored_and_compared():
    lay = layer(op="Threshold", in_bits=20, w_bits=0, weights=0, acc_bits=20, out_bits=2, channels=256, levels=3,
                parallel=2, in_elements=16)
    est = cost.estimate_layer(lay)
    assert est["bram36"] == 2 * 0.5  # 2 banks x 384 x 20 bit = 7680 bits each -> one 512x36 RAMB18
    assert any(n.startswith("thresholds:") for n in est["notes"])
    assert est["lut"] >= 2 * 20  # two comparators of 20 bits


# ---------------------------------------------------------------------------------------------- design


def small_design() -> list[dict]:
    return [
        layer(name="conv1", op="Conv2d", in_bits=8, w_bits=8, acc_bits=24, weights=864, in_elements=3 * 32 * 32,
              parallel=8, kernel=[3, 3]),
        layer(name="thr1", op="Threshold", in_bits=24, w_bits=0, acc_bits=24, out_bits=2, weights=0, channels=32,
              levels=3, in_elements=32 * 30 * 30, parallel=4),
        layer(name="pool1", op="MaxPool", in_bits=2, w_bits=0, weights=0, in_elements=32 * 30 * 30, parallel=4),
        layer(name="flat", op="Reshape", in_bits=2, w_bits=0, weights=0, in_elements=32 * 15 * 15),
        layer(name="fc", in_bits=2, w_bits=2, acc_bits=16, weights=7200 * 10, in_elements=7200, parallel=16),
    ]


@pytest.mark.parametrize("board", sorted(FPGA_BOARDS))
def test_totals_are_the_layer_sums_plus_the_top_level_overhead(board):
    b = get_board(board)
    report = cost.estimate(small_design(), b)
    assert [row["name"] for row in report["layers"]] == ["conv1", "thr1", "pool1", "flat", "fc"]
    assert report["overhead"] == cost.TOP_OVERHEAD
    for r in cost.RESOURCES:
        assert report["totals"][r] == sum(row[r] for row in report["layers"]) + cost.TOP_OVERHEAD[r]
        assert report["capacity"][r] == b["resources"][r]
        assert report["utilisation"][r] == pytest.approx(report["totals"][r] / b["resources"][r])
    assert report["over_budget"] == [r for r in cost.RESOURCES if report["totals"][r] > b["resources"][r]]
    assert report["over_budget"] == []
    assert cost.check_budget(report, b) == []
    for row in report["layers"]:
        assert isinstance(row["dsp"], int) and isinstance(row["lut"], int) and isinstance(row["ff"], int)
        assert isinstance(row["bram36"], float) and isinstance(row["notes"], list)


def dsp_heavy_design() -> list[dict]:
    return [
        layer(name="stem", in_bits=8, w_bits=8, acc_bits=24, weights=256, parallel=16),
        layer(name="big_dense", in_bits=16, w_bits=16, acc_bits=40, weights=16384, in_elements=256, parallel=512),
    ]


def test_over_budget_raises_one_line_naming_resource_layer_and_remedy():
    b = get_board("ultra96")
    report = cost.estimate(dsp_heavy_design(), b)
    assert report["over_budget"] == ["dsp"]
    assert report["totals"]["dsp"] == 16 + 512
    with pytest.raises(EdgeqError) as err:
        cost.check_budget(report, b)
    msg = str(err.value)
    assert "\n" not in msg
    assert "DSP 528 > 360" in msg
    assert "ultra96" in msg and "xczu3eg-sbva484-1-i" in msg
    assert "'big_dense'" in msg and "'stem'" not in msg
    assert "--parallel" in msg and "--allow-over-budget" in msg


def test_allow_over_budget_returns_warnings_instead():
    b = get_board("ultra96")
    report = cost.estimate(dsp_heavy_design(), b)
    warnings = cost.check_budget(report, b, allow_over_budget=True)
    assert len(warnings) == len(report["over_budget"]) == 1
    assert "DSP 528 > 360" in warnings[0] and "'big_dense'" in warnings[0]
    assert all("\n" not in w for w in warnings)


def test_budget_is_checked_against_the_board_given():
    report = cost.estimate(dsp_heavy_design(), get_board("zcu104"))  # 528 of 1,728 DSPs: fits
    assert report["over_budget"] == [] and cost.check_budget(report, get_board("zcu104")) == []
    with pytest.raises(EdgeqError, match="DSP 528 > 220"):
        cost.check_budget(report, get_board("pynq-z2"))


def test_several_resources_over_budget_still_make_one_line():
    huge = [layer(name="huge", in_bits=16, w_bits=16, acc_bits=40, weights=1 << 22, in_elements=1 << 16,
                  parallel=4096)]
    b = get_board("pynq-z2")
    report = cost.estimate(huge, b)
    assert {"dsp", "lut", "bram36"} <= set(report["over_budget"])
    with pytest.raises(EdgeqError) as err:
        cost.check_budget(report, b)
    msg = str(err.value)
    assert "\n" not in msg and "DSP" in msg and "LUT" in msg and "BRAM36" in msg
    assert len(cost.check_budget(report, b, allow_over_budget=True)) == len(report["over_budget"])


@pytest.mark.parametrize(
    "bad, match",
    [
        (layer(name="odd", op="Softmax"), "layer 'odd' has op 'Softmax'"),
        (layer(name="neg", parallel=-1), "layer 'neg' has parallel=-1"),
        (layer(name="nowt", weights=0), "Dense layer 'nowt' has no weights"),
        (layer(name="flt", in_bits=4.5), "layer 'flt' has in_bits=4.5"),
    ],
)
def test_bad_layer_descriptions_are_edgeq_errors_naming_the_layer(bad, match):
    with pytest.raises(EdgeqError, match=match):
        cost.estimate_layer(bad)


# ---------------------------------------------------------------------------------------------
# Minifloat products, the declared rescale, and minifloat decoders
# ---------------------------------------------------------------------------------------------


def test_minifloat_operands_are_described_by_their_fields_and_exponent_range():
    from edgeq.formats import FixedPoint, Int, MiniFloat

    # OCP e4m3: max 448 = 1.75 * 2^8, smallest normal exponent 1 - 7 = -6: r = 14
    assert cost.minifloat_operand(MiniFloat(4, 3, has_nan=True)) == \
        {"exponent_bits": 4, "mantissa_bits": 3, "exp_range": 14}
    # e2m1 (FP4): max 6 = 1.5 * 2^2, smallest normal exponent 0: r = 2
    assert cost.minifloat_operand(MiniFloat(2, 1)) == {"exponent_bits": 2, "mantissa_bits": 1, "exp_range": 2}
    assert cost.minifloat_operand(Int(8)) is None and cost.minifloat_operand(FixedPoint(8, 2)) is None


def test_an_e4m3_by_e2m1_lane_is_a_4x2_significand_product_plus_exponent_add_and_shifter():
    e4m3 = {"exponent_bits": 4, "mantissa_bits": 3, "exp_range": 14}
    e2m1 = {"exponent_bits": 2, "mantissa_bits": 1, "exp_range": 2}
    got = cost.minifloat_product_cost(8, 4, e4m3, e2m1)
    # significands 4 x 2 bits in fabric: 8 partial products + 6 adder LUT, 6 FF; implicit bits 2 LUT; sign 1 LUT;
    # exponent add max(4, 2) + 1 = 5 LUT + FF; shifter: (4 + 2 + 16) bits x ceil(ceil(log2 17) / 2) = 22 x 3 LUT,
    # 22 FF
    assert got == {"impl": "fabric", "dsp": 0, "lut": 14 + 2 + 1 + 5 + 66, "ff": 6 + 5 + 22}
    # the same lane with an int8 activation instead: 8 x 2 significands, no exponent add, shift range 2 only:
    # (8 + 2 + 2) bits x ceil(ceil(log2 3) / 2) = 12 LUT, 12 FF
    mixed = cost.minifloat_product_cost(8, 4, None, e2m1)
    assert mixed == {"impl": "fabric", "dsp": 0, "lut": (16 + 10) + 1 + 1 + 12, "ff": 10 + 12}


def test_mac_rows_price_minifloat_products_and_integers_as_before():
    e4m3 = {"exponent_bits": 4, "mantissa_bits": 3, "exp_range": 14}
    e2m1 = {"exponent_bits": 2, "mantissa_bits": 1, "exp_range": 2}
    base = layer(in_bits=8, w_bits=4, acc_bits=30, parallel=8)
    plain = cost.estimate_layer(base)
    assert plain["dsp"] == 0 and not any("minifloat" in n for n in plain["notes"])  # 8 x 4: fabric, as before
    mf = cost.estimate_layer({**base, "in_minifloat": e4m3, "w_minifloat": e2m1})
    lane = cost.minifloat_product_cost(8, 4, e4m3, e2m1)
    assert mf["lut"] - plain["lut"] == 8 * (lane["lut"] - cost.multiplier_cost(8, 4)["lut"])
    assert any("minifloat product" in n for n in mf["notes"])
    # wider exponents cost more shifter: e4m3 x e4m3 above e2m1 x e2m1 at the same lanes
    big = cost.estimate_layer({**layer(in_bits=8, w_bits=8, acc_bits=46, parallel=8), "in_minifloat": e4m3,
                               "w_minifloat": e4m3})
    small = cost.estimate_layer({**layer(in_bits=4, w_bits=4, acc_bits=14, parallel=8), "in_minifloat": e2m1,
                                 "w_minifloat": e2m1})
    assert big["lut"] > small["lut"]


def test_rescale_is_one_float_multiply_and_one_float_add_with_a_bias():
    row = {"name": "r", "op": "Rescale", "in_bits": 30, "out_bits": 32, "channels": 10, "in_elements": 10,
           "parallel": 1}
    no_bias = cost.estimate_layer(row)
    with_bias = cost.estimate_layer({**row, "has_bias": True})
    assert no_bias["dsp"] == cost.FMUL_COST["dsp"]
    assert with_bias["dsp"] == cost.FMUL_COST["dsp"] + cost.FADD_COST["dsp"]
    assert with_bias["lut"] - no_bias["lut"] >= cost.FADD_COST["lut"]


def test_a_decoder_lane_is_a_shifter_over_the_exponent_range():
    row = {"name": "d", "op": "Decode", "in_bits": 8, "out_bits": 19, "exp_range": 14, "in_elements": 64,
           "parallel": 1}
    got = cost.estimate_layer(row)
    assert got["dsp"] == 0
    assert got["lut"] >= 19 * 2 + 1 + cost.LAYER_CONTROL["lut"]  # 4 mux stages, two per LUT6
