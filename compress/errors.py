"""Typed errors. The CLI turns any :class:`CompressError` into one line on stderr and exit code 2.

Messages name the offending file, field or layer, the value, and what is allowed, so that the one
line is enough to fix the input.
"""

from __future__ import annotations


class CompressError(Exception):
    """Base class: bad input or an unmet precondition the user can fix. Exit code 2."""

    exit_code = 2


class ConfigError(CompressError):
    """A config or recipe field is unknown, mistyped or out of range."""


class ModelLoadError(CompressError):
    """A model path, folder, checkpoint or name cannot be loaded."""


class DataError(CompressError):
    """Evaluation or calibration data is missing, empty, too short or malformed."""


class ArtifactError(CompressError):
    """An artifact directory is missing its manifest, is corrupt, or would be overwritten."""


class ImportMismatchError(CompressError):
    """A model imported from GGUF disagrees with llama.cpp running the same file."""


class IncompatibleLayerError(CompressError):
    """A layer cannot be handled by the chosen scheme (e.g. group size does not divide its width)."""


class ExportMismatchError(CompressError):
    """An exported artifact disagrees with the PyTorch model it came from beyond tolerance."""


class MissingBackendError(CompressError):
    """An optional runtime or library is not installed; the message carries the install command."""


def optional_import(module: str, need: str, package: str):
    """``module``, imported now; MissingBackendError ``"{need}: pip install {package}"`` when it is absent.
    Every optional backend (onnxruntime, onnxruntime-genai, llama.cpp, sentencepiece) is imported through
    here, late, so an install without it still runs everything else and says how to add it.

        ort = optional_import("onnxruntime", "runtime 'onnxruntime' needs onnxruntime", "onnxruntime")
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingBackendError(f"{need}: pip install {package}") from None


class NonFiniteError(CompressError):
    """A number (an option, a config field, a metric, a weight, a loss) is NaN or infinite."""
