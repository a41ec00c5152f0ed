"""Backends lowering the edgeq IR to hardware (installed as edgeq.backends)."""
