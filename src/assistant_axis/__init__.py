"""assistant-axis: find, watch and hold the Assistant Axis of an open-weight chat model.

Every public name of the reference package (safety-research/assistant-axis) is here with the
reference's signature and meaning, so code written for it runs after switching the import (README,
"Coming from the reference package", lists the few deliberate differences). This project's own API
sits beside it: ``CappingConfig`` (capping floors and the first-token policy),
``ActivationSteering.from_caps``/``from_experiment`` (with telemetry), ``build_conversation``,
``encode_conversation``, ``load_role_vectors``/``save_role_vectors`` and the pipeline.

Names are imported on first use (PEP 562), so ``import assistant_axis.models`` or the workflow's
parse step does not pay for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_EXPORTS = {
    # the reference package's public API
    "extract_response_activations": "activations",
    "aggregate_role_vectors": "axis",
    "axis_norm_per_layer": "axis",
    "compute_axis": "axis",
    "cosine_similarity_per_layer": "axis",
    "load_axis": "axis",
    "project": "axis",
    "project_batch": "axis",
    "save_axis": "axis",
    "load_capping_config": "capping",
    "format_conversation": "generation",
    "generate_response": "generation",
    "MODEL_CONFIGS": "models",
    "get_config": "models",
    "load_model": "models",
    "L2MeanScaler": "pca",
    "MeanScaler": "pca",
    "compute_pca": "pca",
    "plot_variance_explained": "pca",
    "RoleResponseGenerator": "reference_vllm",
    "VLLMGenerator": "reference_vllm",
    "ActivationSteering": "steering",
    "build_capping_steerer": "steering",
    "create_feature_ablation_steerer": "steering",
    "create_mean_ablation_steerer": "steering",
    "create_multi_feature_steerer": "steering",
    # this project's own
    "load_role_vectors": "axis",
    "save_role_vectors": "axis",
    "CappingConfig": "capping",
    "build_conversation": "conversation",
    "encode_conversation": "conversation",
    "DEFAULT_MODEL": "models",
}

__all__ = [
    "ActivationSteering",
    "CappingConfig",
    "DEFAULT_MODEL",
    "L2MeanScaler",
    "MODEL_CONFIGS",
    "MeanScaler",
    "RoleResponseGenerator",
    "VLLMGenerator",
    "aggregate_role_vectors",
    "axis_norm_per_layer",
    "build_capping_steerer",
    "build_conversation",
    "compute_axis",
    "compute_pca",
    "cosine_similarity_per_layer",
    "create_feature_ablation_steerer",
    "create_mean_ablation_steerer",
    "create_multi_feature_steerer",
    "encode_conversation",
    "extract_response_activations",
    "format_conversation",
    "generate_response",
    "get_config",
    "load_axis",
    "load_capping_config",
    "load_model",
    "load_role_vectors",
    "plot_variance_explained",
    "project",
    "project_batch",
    "save_axis",
    "save_role_vectors",
]

if TYPE_CHECKING:
    from .activations import extract_response_activations
    from .axis import (
        aggregate_role_vectors,
        axis_norm_per_layer,
        compute_axis,
        cosine_similarity_per_layer,
        load_axis,
        load_role_vectors,
        project,
        project_batch,
        save_axis,
        save_role_vectors,
    )
    from .capping import CappingConfig, load_capping_config
    from .conversation import build_conversation, encode_conversation
    from .generation import format_conversation, generate_response
    from .models import DEFAULT_MODEL, MODEL_CONFIGS, get_config, load_model
    from .pca import L2MeanScaler, MeanScaler, compute_pca, plot_variance_explained
    from .reference_vllm import RoleResponseGenerator, VLLMGenerator
    from .steering import (
        ActivationSteering,
        build_capping_steerer,
        create_feature_ablation_steerer,
        create_mean_ablation_steerer,
        create_multi_feature_steerer,
    )


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'assistant_axis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
