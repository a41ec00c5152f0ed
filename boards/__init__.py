"""Shipped board descriptions (one TOML per board)."""
