"""compress: make language models small and fast for laptops and phones, with the evidence.

Stages are verbs with frozen, versioned configs (see :mod:`compress.config`); every output
directory carries a ``manifest.json`` (see :mod:`compress.manifest`).
"""

__version__ = "0.1.0"
