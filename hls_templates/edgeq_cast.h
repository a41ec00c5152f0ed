// edgeq_cast: requantize integer codes through ap_fixed's own conversion rule.
//
// The input codes are reinterpreted (no rounding) as IN_FX = ap_fixed<IW, II>, assigned to
// OUT_FX = ap_[u]fixed<OW, OI, Q, O> -- the cast applies the quantization mode Q and overflow
// mode O exactly as Vitis HLS does -- and the result's bits are returned as integer codes. WIDE_FX is
// IN_FX with integer bits added (an exact sign extension) wherever the output's rounding position lies
// above IN_FX's MSB: ap_fixed's conversion reads those bits and aborts in csim when they do not exist.
#ifndef EDGEQ_CAST_H
#define EDGEQ_CAST_H

#include "ap_fixed.h"

template <typename XT, typename YT, typename IN_FX, typename WIDE_FX, int IW, typename OUT_FX, typename OUT_INT, int OW,
          int N>
void edgeq_cast(const XT x[N], YT y[N]) {
cast_i:
    for (int i = 0; i < N; i++) {
#pragma HLS PIPELINE II = 1
        IN_FX a;
        a.range(IW - 1, 0) = ap_int<IW>(x[i]);
        WIDE_FX w = a;
        OUT_FX o = w;
        OUT_INT bits = o.range(OW - 1, 0);
        y[i] = (YT)bits.to_int64();
    }
}

#endif
