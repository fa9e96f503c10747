"""Runtimes behind one protocol: the same token ids go through PyTorch, onnxruntime and llama.cpp.

    rt = get_runtime("pytorch")
    rt.load("smollm2-135m", DeviceProfile())
    logits = rt.logits([1, 2, 3])          # (3, vocab) float32
    gen = rt.generate([1, 2, 3], max_new_tokens=16)
    rt.weight_bytes(), rt.kv_bytes_per_position()   # what one decode step reads (the roofline)

Every runtime loads with the same ``load(artifact, profile, *, n_ctx=None, verify=True)``. Accuracy and
latency code only sees :class:`Runtime`; backends import lazily and raise ``MissingBackendError`` with the
install command when absent.
"""

from .base import DeviceProfile, Generation, Runtime, get_runtime, import_backend, known_runtimes, register_runtime

# export-onnx artifacts (issue #4); onnxruntime itself is imported only when a session is made. Not transformers:
# the runtime reads tokenizer.json without it (it imports torch: +163 MiB anonymous in a bench worker), and only
# when text is asked for
register_runtime("onnxruntime", "runtimes.onnx_runtime", "OnnxRuntime", "onnxruntime==1.32.0", ("onnxruntime",))
# the same export-onnx folders through onnxruntime-genai's generator (issue #14), as apps embed them
register_runtime("onnxruntime-genai", "runtimes.genai_runtime", "GenaiRuntime", "onnxruntime-genai==0.18.0",
                 ("onnxruntime_genai",))
# export-gguf artifacts and plain .gguf files (issue #5)
register_runtime("llama.cpp", "runtimes.llama_cpp_runtime", "LlamaCppRuntime", "llama-cpp-python==0.3.36",
                 ("llama_cpp",))

__all__ = ["DeviceProfile", "Generation", "Runtime", "get_runtime", "import_backend", "known_runtimes"]
