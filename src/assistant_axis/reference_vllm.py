"""The reference package's vLLM generators, ``VLLMGenerator`` and ``RoleResponseGenerator``, on this project's engine.

Code written against the reference's ``assistant_axis.generation`` runs unchanged: same
constructors, defaults, methods, return values and output files (one ``<role>.jsonl`` per role,
each line ``{"system_prompt", "prompt_index", "question_index", "question", "conversation",
"label": "pos"}``). Underneath, the engine is :class:`assistant_axis.vllm_backend.VLLMEngine`
(started without hooks), so the CPU settings of this machine and the embedded model work too.

Like the reference: vLLM's ``SamplingParams(temperature, max_tokens, top_p)`` with no seed and
no extra stop tokens, text prompts rendered with the chat template, and the completion text as
vLLM returns it (not stripped). Deliberate differences, all listed in the README:

* thinking is always off and a system prompt is folded into the user turn when the template has
  no system role (the reference switches thinking off only for model names containing "qwen");
* ``trust_remote_code`` is off unless passed (it runs code from the model's repository);
* on CPU, ``gpu_memory_utilization`` is ignored: the KV cache is sized by ``kv_cache_gib``;
* ``tensor_parallel_size=None`` means every visible GPU, or 1 without GPUs;
* output files are written atomically, so a killed run never leaves a half-written role file that
  ``skip_existing`` would then trust.

Extra keyword arguments (``dtype``, ``kv_cache_gib``, vLLM's own) go to ``VLLMEngine``.
``vllm.LLM`` spawns processes: create these under ``if __name__ == "__main__":`` in scripts.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .conversation import Message, substitute_model_name
from .conversation import format_conversation as render_prompt
from .generation import format_conversation
from .roles import load_questions
from .storage import write_text

log = logging.getLogger(__name__)

__all__ = ["RoleResponseGenerator", "VLLMGenerator"]


class VLLMGenerator:
    """Batch generation with vLLM (reference API): ``load()``, ``generate_batch``, ``generate_for_role``."""

    def __init__(
        self,
        model_name: str,
        max_model_len: int = 2048,
        tensor_parallel_size: int | None = None,
        gpu_memory_utilization: float = 0.9,
        temperature: float = 0.7,
        max_tokens: int = 512,
        top_p: float = 0.9,
        **engine_kwargs: Any,
    ) -> None:
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.tensor_parallel_size = tensor_parallel_size
        self.gpu_memory_utilization = gpu_memory_utilization
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.top_p = top_p
        self.engine_kwargs = engine_kwargs
        self.engine: Any = None
        self.llm: Any = None
        self.sampling_params: Any = None

    def load(self) -> None:
        """Start the vLLM engine once (later calls do nothing)."""
        if self.llm is not None:
            return
        import torch

        from .vllm_backend import VLLMEngine

        gpus = torch.cuda.device_count()
        tp = self.tensor_parallel_size or max(gpus, 1)
        log.info("Loading vLLM model: %s", self.model_name)
        self.engine = VLLMEngine(
            self.model_name,
            tensor_parallel_size=tp,
            max_model_len=self.max_model_len,
            gpu_memory_utilization=self.gpu_memory_utilization if gpus else None,
            hooks=False,
            **self.engine_kwargs,
        )
        self.llm = self.engine.llm
        from vllm import SamplingParams

        self.sampling_params = SamplingParams(temperature=self.temperature, max_tokens=self.max_tokens, top_p=self.top_p)
        log.info("Model loaded successfully")

    def close(self) -> None:
        """Stop vLLM's processes now rather than at interpreter exit (an extension)."""
        if self.engine is not None:
            self.engine.close()
        self.engine = self.llm = self.sampling_params = None

    def generate_batch(self, conversations: Sequence[list[Message]]) -> list[str]:
        """One completion text per conversation (each a list of ``{"role", "content"}`` dicts)."""
        self.load()
        prompts = [render_prompt(self.engine.tokenizer, conv, add_generation_prompt=True) for conv in conversations]
        log.info("Running batch inference for %d prompts...", len(prompts))
        outputs = self.llm.generate(prompts, self.sampling_params)
        return [out.outputs[0].text for out in outputs]

    def generate_for_role(
        self, instructions: Sequence[str], questions: Sequence[str], prompt_indices: Sequence[int] | None = None
    ) -> list[dict[str, Any]]:
        """Every chosen instruction x every question: result dicts with the finished conversation.

        Instruction indices past the end of ``instructions`` are skipped, as in the reference.
        """
        self.load()
        tokenizer = self.engine.tokenizer
        indices = list(range(len(instructions))) if prompt_indices is None else list(prompt_indices)
        conversations, meta = [], []
        for p_idx in indices:
            if p_idx >= len(instructions):
                continue
            for q_idx, question in enumerate(questions):
                conversations.append(format_conversation(instructions[p_idx], question, tokenizer))
                meta.append({"system_prompt": instructions[p_idx], "prompt_index": p_idx, "question_index": q_idx, "question": question})
        if not conversations:
            return []
        responses = self.generate_batch(conversations)
        return [
            {**m, "conversation": conv + [{"role": "assistant", "content": text}]}
            for conv, m, text in zip(conversations, meta, responses)
        ]


class RoleResponseGenerator:
    """Responses for every role file of a folder, one ``<role>.jsonl`` each (reference API)."""

    def __init__(
        self,
        model_name: str,
        roles_dir: str | os.PathLike[str],
        output_dir: str | os.PathLike[str],
        questions_file: str | os.PathLike[str],
        max_model_len: int = 2048,
        tensor_parallel_size: int | None = None,
        gpu_memory_utilization: float = 0.9,
        question_count: int = 240,
        temperature: float = 0.7,
        max_tokens: int = 512,
        top_p: float = 0.9,
        prompt_indices: Sequence[int] | None = None,
        short_name: str | None = None,
        **engine_kwargs: Any,
    ) -> None:
        self.model_name = model_name
        self.roles_dir = Path(roles_dir)
        self.output_dir = Path(output_dir)
        self.questions_file = questions_file
        self.question_count = question_count
        self.prompt_indices = list(prompt_indices) if prompt_indices is not None else list(range(5))
        if short_name is None:
            from .models import get_config

            short_name = get_config(model_name)["short_name"]
        self.short_name = short_name
        self.generator = VLLMGenerator(
            model_name=model_name, max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization, temperature=temperature, max_tokens=max_tokens, top_p=top_p,
            **engine_kwargs,
        )
        self.questions: list[str] | None = None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        log.info("Initialized RoleResponseGenerator with model: %s; output directory: %s", model_name, self.output_dir)

    def load_questions(self) -> list[str]:
        """The first ``question_count`` questions of the JSONL file (field ``question``), checked."""
        if self.questions is None:
            self.questions = [q.text for q in load_questions(self.questions_file)][: self.question_count]
            log.info("Loaded %d questions", len(self.questions))
        return self.questions

    def load_role(self, role_file: Path) -> dict[str, Any]:
        return json.loads(Path(role_file).read_text(encoding="utf-8"))

    def format_instruction(self, instruction: str) -> str:
        """Replace the ``{model_name}`` placeholder with the model's short name."""
        return substitute_model_name(instruction, self.short_name)

    def generate_role_responses(self, role_name: str, role_data: dict[str, Any]) -> list[dict[str, Any]]:
        instructions = role_data.get("instruction", [])
        if not instructions:
            return []
        questions = self.load_questions()
        formatted = [self.format_instruction(inst.get("pos", "")) for inst in instructions]
        log.info("Processing role '%s' with %d questions", role_name, len(questions))
        results = self.generator.generate_for_role(formatted, questions, self.prompt_indices)
        for r in results:
            r["label"] = "pos"
        return results

    def output_file(self, role_name: str) -> Path:
        return self.output_dir / f"{role_name}.jsonl"

    def save_responses(self, role_name: str, responses: Sequence[dict[str, Any]]) -> None:
        """``<output_dir>/<role>.jsonl``, one JSON object per line, written atomically."""
        write_text(self.output_file(role_name), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in responses))
        log.info("Saved %d responses to %s", len(responses), self.output_file(role_name))

    def should_skip_role(self, role_name: str) -> bool:
        return self.output_file(role_name).exists()

    def process_all_roles(self, skip_existing: bool = True, roles: Sequence[str] | None = None) -> None:
        """Generate and save every role (or ``roles``); with ``skip_existing`` finished roles are kept.

        As in the reference, a role file without ``instruction`` is skipped with a warning and a role
        that fails is logged and skipped, so one bad file does not stop the others.
        """
        self.generator.load()
        self.load_questions()
        role_files: dict[str, dict[str, Any]] = {}
        for path in sorted(self.roles_dir.glob("*.json")):
            try:
                data = self.load_role(path)
            except (OSError, ValueError) as exc:
                log.error("Error loading %s: %s", path, exc)
                continue
            if not isinstance(data, dict) or "instruction" not in data:
                log.warning("Skipping %s: missing 'instruction' field", path.stem)
                continue
            role_files[path.stem] = data
        log.info("Found %d role files", len(role_files))
        if roles:
            role_files = {k: v for k, v in role_files.items() if k in roles}
        if skip_existing:
            role_files = {k: v for k, v in role_files.items() if not self.should_skip_role(k)}
        log.info("Processing %d roles", len(role_files))
        for role_name, role_data in tqdm(role_files.items(), desc="Processing roles"):
            try:
                responses = self.generate_role_responses(role_name, role_data)
                if responses:
                    self.save_responses(role_name, responses)
            except Exception as exc:  # the reference logs a failed role and goes on with the others
                log.error("Error processing %s: %s", role_name, exc)
