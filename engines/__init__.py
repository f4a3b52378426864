"""Inference engines: the interface, the backend factory and the built-in model."""

from cynode.engines.base import (
    ChatMessage,
    EngineHealth,
    GenerationRequest,
    InferenceEngine,
    ModelCard,
    SamplingParams,
    TokenDelta,
    Usage,
)
from cynode.engines.builtin_model import BUILTIN_ALIASES, BUILTIN_MODEL_ID, ensure_builtin_model
from cynode.engines.factory import create_engine
from cynode.engines.platform import BACKENDS, Platform, Probe, platform_of, select_backend

__all__ = [
    "BACKENDS",
    "BUILTIN_ALIASES",
    "BUILTIN_MODEL_ID",
    "ChatMessage",
    "EngineHealth",
    "GenerationRequest",
    "InferenceEngine",
    "ModelCard",
    "Platform",
    "Probe",
    "SamplingParams",
    "TokenDelta",
    "Usage",
    "create_engine",
    "ensure_builtin_model",
    "platform_of",
    "select_backend",
]
