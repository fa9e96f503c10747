"""Integration tier: the bundled SmolLM2-135M through short paths (`pytest -m integration`)."""
