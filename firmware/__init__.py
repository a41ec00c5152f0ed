"""Firmware sources for the MCU backend."""
