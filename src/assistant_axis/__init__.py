"""assistant-axis: find, watch and hold the Assistant Axis of an open-weight chat model.

The public names mirror the reference project's API so its users can switch.
"""

from .activations import extract_response_activations
from .axis import (
    aggregate_role_vectors,
    axis_norm_per_layer,
    compute_axis,
    compute_pca,
    cosine_similarity_per_layer,
    load_axis,
    project,
    project_batch,
    save_axis,
)
from .capping import CappingConfig, load_capping_config
from .conversation import build_conversation, encode_conversation, format_conversation
from .generation import generate_response
from .models import DEFAULT_MODEL, MODEL_CONFIGS, get_config, load_model
from .steering import ActivationSteering, build_capping_steerer

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_CONFIGS",
    "ActivationSteering",
    "CappingConfig",
    "aggregate_role_vectors",
    "axis_norm_per_layer",
    "build_capping_steerer",
    "build_conversation",
    "compute_axis",
    "compute_pca",
    "cosine_similarity_per_layer",
    "encode_conversation",
    "extract_response_activations",
    "format_conversation",
    "generate_response",
    "get_config",
    "load_axis",
    "load_capping_config",
    "load_model",
    "project",
    "project_batch",
    "save_axis",
]
