"""compress: make language models small and fast for laptops and phones, with the evidence.

Stages are verbs with frozen, versioned configs (see :mod:`compress.config`); every output
directory carries a ``manifest.json`` (see :mod:`compress.manifest`).

In the order data flows, each layer importing only those before it (the README's Layout says the same;
tests/test_imports.py checks it): the core modules here name and load a model (:mod:`.bundled`,
:mod:`.fetch`, :mod:`.gguf_import`, :mod:`.checkpoints`, :mod:`.models`), name what it holds
(:mod:`.content`, :mod:`.manifest`) and score it (:mod:`.data`, :mod:`.evaluate`); :mod:`.kinds` is the
table of every artifact kind that they and every later layer read. Then the runtimes (package
``runtimes``: one protocol for PyTorch, onnxruntime and llama.cpp), the stages that make artifacts
(:mod:`.prune`, :mod:`.distill`, :mod:`.quantize`), the exporters (package ``export``), what measures and
uses the results (:mod:`.harness`, :mod:`.diagnose`, :mod:`.chat`), and the commands that drive them
(:mod:`.pipeline`, :mod:`.cli`, each package's ``cli``).
"""

__version__ = "0.1.0"
