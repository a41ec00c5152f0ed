"""HLS C++ templates rendered by the FPGA backend."""
