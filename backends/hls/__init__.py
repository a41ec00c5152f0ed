"""FPGA backend: lowers the edgeq IR to a Vitis HLS project (C++ kernels, TCL, driver)."""
