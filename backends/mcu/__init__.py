"""MCU backend: RISC-V FP16 C kernels, firmware, memory plan, flashing."""
