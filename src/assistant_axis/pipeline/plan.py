"""A plan before a long or paid run: per model, the work, its cost, its size and the resources to ask for.

One computation serves three readers: ``assistant-axis plan --configfile F`` prints it, the
Snakefile prints it once at the start of a run (and of a dry run), and the rules take their SLURM
resources (``gpu``, ``mem_mb``, ``runtime``) from :func:`rule_resources`, so what the plan states
is what the jobs ask for.

Everything is computed from the config, the role and question files and the model's facts
(:func:`assistant_axis.models.describe_model`: the built-in table or ``config.json``, never
weights), with the throughput assumptions of :class:`Assumptions`, which the printed plan states.
Token counts are estimates: prompts at ``chars / 4`` plus a fixed template allowance, replies at
their maximum length (an upper bound: replies that stop early cost less).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..judges.api import DEFAULT_MAX_TOKENS, estimate_cost, price_usd_per_mtok
from ..roles import DEFAULT_ROLE, RoleSet
from .config import stored_layers
from .layout import shard_roles

GPU_STAGES = ("generate", "extract", "evaluate_capping", "drift", "trait_vectors", "drift_analysis")
BYTES = {"auto": 2, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "float32": 4, "fp32": 4}
GB = 1e9
MB = 2**20


@dataclass(frozen=True)
class Assumptions:
    """Throughput and sizing assumptions behind every time and memory figure (printed with the plan)."""

    gpu: str = "NVIDIA H100 80GB SXM"
    gpu_memory_gb: float = 80.0  # the config's gpu_memory_gb replaces it
    usable_share: float = 0.9  # of a GPU's memory, for weights, caches and working memory
    gpu_flops: float = 989e12  # bf16 dense tensor-core peak, FLOP/s
    mfu: float = 0.4  # share of that peak reached by prefill and extraction forward passes
    gpu_bandwidth: float = 3.35e12  # HBM bytes/s: each decoding step reads every weight once
    decode_concurrency: int = 256  # sequences vLLM decodes together (its default max_num_seqs)
    cpu_flops: float = 8e10  # effective FLOP/s of one CPU job, measured here: SmolLM2-135M ~300 tokens/s on 2 cores
    chars_per_token: float = 4.0
    template_tokens: int = 32  # chat-template tokens around a system prompt and a question
    runtime_margin: float = 2.0  # SLURM runtime = margin x estimate + 30 minutes (at least 60)
    host_base_mb: int = 4096  # Python, torch, tokenizer and data of a model job

    def describe(self) -> str:
        return (
            f"GPU {self.gpu}: {self.gpu_memory_gb:g} GB ({self.usable_share:.0%} usable), {self.gpu_flops / 1e12:g} TFLOP/s bf16 dense at "
            f"{self.mfu:.0%} utilisation for forward passes, {self.gpu_bandwidth / 1e12:g} TB/s memory bandwidth "
            f"bounding decoding, {self.decode_concurrency} sequences decoded together by vLLM; CPU jobs "
            f"{self.cpu_flops / 1e9:g} GFLOP/s (measured on this project's 2-core machine); forward pass = "
            f"2 x parameters FLOP per token; prompts chars/{self.chars_per_token:g} + {self.template_tokens} "
            f"template tokens, replies at their maximum length; SLURM runtime = {self.runtime_margin:g} x "
            "estimate + 30 min"
        )


@dataclass
class StagePlan:
    """One stage of one run: its jobs, time per job, memory, and what each job asks SLURM for."""

    stage: str
    jobs: int
    hours_per_job: float  # wall-clock estimate
    gpus: int  # GPUs per job (0 on CPU)
    gpu_memory_gb: float | None = None  # needed per GPU
    host_mb: int = 4000
    note: str = ""
    runtime_minutes: int | None = None  # a fixed wall time instead of margin x estimate (waiting on an API)

    @property
    def gpu_hours(self) -> float:
        return self.jobs * self.hours_per_job * self.gpus

    def resources(self, margin: float) -> dict[str, int]:
        runtime = self.runtime_minutes or max(60, math.ceil(margin * self.hours_per_job * 60 + 30))
        return {"gpu": self.gpus, "mem_mb": int(self.host_mb), "runtime": runtime}


@dataclass
class RunPlan:
    """Everything the plan states about one run (model) of the config."""

    run: str
    model: str
    facts: Any
    device: str  # "gpu" or "cpu": what the estimates assume
    device_note: str
    dtype_bytes: int
    gpus: int
    target_layer: int
    windows: list[list[int]]
    windows_derived: bool
    percentiles: list[float]
    roles: int  # role-play roles (default excluded)
    prompts: int
    questions: int
    default_prompts: int
    responses: int
    prompt_tokens: int
    generated_tokens: int
    forward_tokens: int
    judge_calls: int
    judge_desc: str
    judge_usd: float | None
    eval_judge_calls: int
    eval_judge_desc: str
    eval_judge_usd: float | None
    storage_dtype: str
    stored: list[int]
    activation_bytes: int
    largest_shard_bytes: int
    role_bytes_float32: int
    weight_bytes: int
    hf_gpus: int = 0  # GPUs of an HF job (extraction): as few as hold the model; > 1 means device_map="auto"
    stages: dict[str, StagePlan] = field(default_factory=dict)
    trait_replies: int = 0  # trait_vectors: replies generated and judged (0 when the stage is off)
    trait_judge_desc: str = ""
    trait_judge_usd: float | None = 0.0

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages.values())

    @property
    def judge_total_usd(self) -> float | None:
        if self.judge_usd is None or self.eval_judge_usd is None or self.trait_judge_usd is None:
            return None
        return self.judge_usd + self.eval_judge_usd + self.trait_judge_usd


@dataclass
class WorkflowPlan:
    runs: dict[str, RunPlan]
    assumptions: Assumptions
    source: str = ""

    def resources(self, run: str, stage: str) -> dict[str, int]:
        return rule_resources(self, run, stage)


def _tokens(chars: float, a: Assumptions) -> float:
    return chars / a.chars_per_token


def _judge_cost(cfg: Mapping[str, Any], calls: int, tokens_in: int) -> tuple[str, float | None]:
    """(description, USD) for ``calls`` judge calls with ``tokens_in`` input tokens in all."""
    backend = cfg.get("backend", "offline")
    if backend in ("offline", "local"):
        return f"{backend}{'/' + cfg['model'] if cfg.get('model') else ''} (no API cost)", 0.0
    if backend == "anthropic":
        from ..judges.anthropic_backend import DEFAULT_MODEL
    else:
        from ..judges.openai_backend import DEFAULT_MODEL
    model = cfg.get("model") or DEFAULT_MODEL
    batch = backend == "anthropic" and bool(cfg.get("use_batches", False))
    est = estimate_cost(calls, tokens_in, calls * int(cfg.get("max_tokens", DEFAULT_MAX_TOKENS)), price_usd_per_mtok(model, cfg), batch)
    desc = f"{backend}/{model}{' (Message Batches, half price)' if batch else ''}, ~{est.input_tokens / 1e6:.1f} M input tokens"
    return desc, est.usd


def _count_lines(path: str | Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def _device(settings: Mapping[str, Any]) -> tuple[str, str]:
    device = str(settings["device"])
    if device == "cpu":
        return "cpu", "cpu"
    if device != "auto":
        return "gpu", device
    from ..models import gpu_visible  # no torch at parse time: a dry run must stay fast

    if gpu_visible():
        return "gpu", "auto (a GPU is visible here)"
    return "cpu", "auto: no GPU visible here, so CPU figures; set device: cuda for GPU estimates"


def plan_run(
    config: Mapping[str, Any], run: str, settings: Mapping[str, Any], facts: Any, role_set: RoleSet,
    eval_files: Mapping[str, str], a: Assumptions, trait_set: Mapping[str, Any] | None = None,
) -> RunPlan:
    """The plan of one run; ``settings`` come from :func:`.config.resolve_run`."""
    layers, hidden = facts.total_layers, int(facts.hidden_size or 0)
    dims = facts.dims or {}
    params = int(facts.n_parameters or 0)
    dtype_bytes = BYTES.get(str(settings["dtype"]), 2)
    weight_bytes = params * dtype_bytes
    gpus = int(settings.get("gpus", 1))
    device, device_note = _device(settings)
    gen = settings["generation"]
    max_new = int(gen["max_new_tokens"])
    n_p, n_dp, n_q = int(config["prompts_per_role"]), int(config["default_prompts"]), len(role_set.questions)
    q_chars = sum(len(q.text) for q in role_set.questions)

    responses = prompt_chars = judge_calls = judge_chars = 0
    role_rows: dict[str, int] = {}
    for name, role in role_set.roles.items():
        prompts = [p.replace("{model_name}", facts.short_name) for p in role.prompts[: n_dp if name == DEFAULT_ROLE else n_p]]
        count = len(prompts) * n_q
        role_rows[name] = count
        responses += count
        prompt_chars += n_q * sum(len(p) for p in prompts) + len(prompts) * q_chars
        if name != DEFAULT_ROLE and role.eval_prompt is not None:
            # the judge prompt: the rubric with {question} and {answer} filled in (a reply of max_new tokens)
            n_q_slots, n_a_slots = role.eval_prompt.count("{question}"), role.eval_prompt.count("{answer}")
            rubric = len(role.eval_prompt) - n_q_slots * len("{question}") - n_a_slots * len("{answer}")
            judge_calls += count
            judge_chars += count * (rubric + n_a_slots * max_new * a.chars_per_token) + len(prompts) * n_q_slots * q_chars
    prompt_tokens = int(_tokens(prompt_chars, a) + responses * a.template_tokens)
    generated = responses * max_new
    forward = prompt_tokens + generated
    judge_desc, judge_usd = _judge_cost(settings["judge"], judge_calls, int(_tokens(judge_chars, a)))

    # capping evaluation: every selected experiment plus the unsteered model, and the no-persona baseline
    windows = [list(w) for w in settings["capping"]["windows"]]
    ev = config["capping_eval"]
    percentiles = list(settings["capping"]["percentiles"])
    evaluated = ev["percentiles"] or percentiles
    n_jb = ev["n_jailbreaks"] or _count_lines(eval_files["jailbreaks"])
    n_mc = ev["n_mc"] or _count_lines(eval_files["mc_file"])
    n_ppl = ev["n_perplexity"] or role_rows.get(DEFAULT_ROLE, 0)
    conditions = len(windows) * len(evaluated) + 1 if windows else 0
    eval_calls = (conditions + 1) * n_jb if windows else 0
    rubric_chars = Path(eval_files["harm_rubric"]).stat().st_size
    eval_chars = eval_calls * (rubric_chars + 200 + int(ev["generation"]["max_new_tokens"]) * a.chars_per_token)  # request ~200 chars
    eval_judge_desc, eval_judge_usd = _judge_cost(ev["judge"], eval_calls, int(_tokens(eval_chars, a)))
    run_capping = config["models"][run].get("capping", {})
    configured = run_capping["windows"] if "windows" in run_capping else config["capping"]["windows"]

    storage = settings["extraction"]["storage_dtype"]
    stored = stored_layers(settings, layers)
    value_bytes = {"float32": 4, "float16": 2, "bfloat16": 2}[storage]
    activation_bytes = responses * len(stored) * hidden * value_bytes
    shards = shard_roles(list(role_set.roles), int(config["shards"]))
    largest = max(sum(role_rows[r] for r in shard) for shard in shards)
    biggest_role = max(role_rows.values())

    plan = RunPlan(
        run=run, model=facts.name, facts=facts, device=device, device_note=device_note, dtype_bytes=dtype_bytes, gpus=gpus,
        target_layer=int(settings["target_layer"]), windows=windows, windows_derived=configured is None and bool(windows),
        percentiles=percentiles, roles=sum(1 for r in role_set.roles if r != DEFAULT_ROLE), prompts=n_p, questions=n_q,
        default_prompts=n_dp if DEFAULT_ROLE in role_set.roles else 0, responses=responses, prompt_tokens=prompt_tokens,
        generated_tokens=generated, forward_tokens=forward, judge_calls=judge_calls, judge_desc=judge_desc, judge_usd=judge_usd,
        eval_judge_calls=eval_calls, eval_judge_desc=eval_judge_desc, eval_judge_usd=eval_judge_usd, storage_dtype=storage,
        stored=stored, activation_bytes=activation_bytes, largest_shard_bytes=largest * len(stored) * hidden * value_bytes,
        role_bytes_float32=biggest_role * len(stored) * hidden * 4, weight_bytes=weight_bytes,
    )

    # ---- time and memory per stage ----
    on_gpu = device == "gpu"
    kv_per_token = 2 * layers * int(dims.get("num_key_value_heads") or dims.get("num_attention_heads") or 0) * int(
        dims.get("head_dim") or (hidden // int(dims.get("num_attention_heads") or 1))) * dtype_bytes
    inter = int(dims.get("intermediate_size") or 4 * hidden)
    n_jobs = len(shards)
    avg_prompt = prompt_tokens / max(responses, 1)
    weights_mb = weight_bytes / MB

    def forward_s(tokens: float, parallel_gpus: int, fraction: float = 1.0) -> float:
        flops = 2 * params * tokens * fraction
        return flops / (a.gpu_flops * a.mfu * parallel_gpus) if on_gpu else flops / a.cpu_flops

    def generate_s(prompt_tok: float, new_tok: float, concurrency: int, parallel_gpus: int) -> float:
        if not on_gpu:
            return 2 * params * (prompt_tok + new_tok) / a.cpu_flops
        step = max(weight_bytes / (a.gpu_bandwidth * parallel_gpus), 2 * params * concurrency / (a.gpu_flops * a.mfu * parallel_gpus))
        return forward_s(prompt_tok, parallel_gpus) + new_tok / max(concurrency, 1) * step

    def host_mb(extra_mb: float = 0.0, hf: bool = True) -> int:
        return int(a.host_base_mb + (1.25 if hf else 1.0) * weights_mb + extra_mb)

    from ..models import resolve_backend

    # generation, capping evaluation and drift run on vLLM when the backend resolves to it
    vllm = resolve_backend(settings["backend"], warn=lambda _msg: None) == "vllm"
    tp = int(settings["vllm"].get("tensor_parallel_size", 1)) if vllm else 1
    seq = min(avg_prompt + max_new, float(settings["vllm"].get("max_model_len", avg_prompt + max_new)))
    concurrency = a.decode_concurrency if vllm else int(config["batch_size"])
    kv_gb = kv_per_token * concurrency * seq / GB
    cpu_kv_mb = 0.0 if on_gpu or not vllm else float(settings["vllm"].get("kv_cache_gib", 4)) * 1024

    # HF stages (extraction; generation, evaluation and drift without vLLM): one batch of forward
    # passes at a time, plus the attention scores of eager attention (soft-capped models)
    ex = settings["extraction"]
    working_gb = int(ex["max_batch_tokens"]) * (4 * hidden + 3 * inter) * dtype_bytes / GB
    if dims.get("attn_logit_softcapping"):
        working_gb += int(ex["max_batch_tokens"]) * seq * int(dims.get("num_attention_heads") or 1) * 4 / GB
    # HF stages take as few of the run's GPUs as hold the model (device_map="auto" across them: the
    # GPUs work one after another, so more would only idle); vLLM shards over all of them
    hf_gpus = min(gpus, max(1, math.ceil((weight_bytes / GB + working_gb) / (a.gpu_memory_gb * a.usable_share)))) if on_gpu else 0
    plan.hf_gpus = hf_gpus
    hf_gpu_gb = weight_bytes / GB / hf_gpus + working_gb if on_gpu else None
    model_gpus = (gpus if vllm else hf_gpus) if on_gpu else 0
    gen_gpu_gb = ((weight_bytes / GB + kv_gb) / tp if vllm else hf_gpu_gb + kv_gb) if on_gpu else None
    gen_parallel = tp if vllm else 1

    plan.stages["generate"] = StagePlan(
        "generate", n_jobs, generate_s(prompt_tokens / n_jobs, generated / n_jobs, concurrency, gen_parallel) / 3600,
        model_gpus, gen_gpu_gb,
        host_mb(cpu_kv_mb if vllm else kv_gb * GB / MB * (0 if on_gpu else 1), hf=not vllm),
        f"{'vLLM, tensor parallel ' + str(tp) if vllm else 'HF generate, batch ' + str(concurrency)}; KV cache {kv_gb:.1f} GB "
        f"for {concurrency} sequences of ~{seq:.0f} tokens",
    )
    deepest = (max(stored) + 1) / layers if stored else 1.0  # the pass stops after the deepest stored layer
    plan.stages["extract"] = StagePlan(
        "extract", n_jobs, forward_s(forward / n_jobs, 1, deepest) / 3600, hf_gpus, hf_gpu_gb,
        host_mb(0 if on_gpu else working_gb * GB / MB),
        f"HF forward passes{' over ' + str(hf_gpus) + ' GPUs (device_map=auto)' if hf_gpus > 1 else ''}, "
        f"{ex['max_batch_tokens']} tokens per batch",
    )
    batches = settings["judge"].get("backend") == "anthropic" and bool(settings["judge"].get("use_batches"))
    plan.stages["judge"] = StagePlan(
        "judge", n_jobs, _judge_hours(settings["judge"], judge_calls / n_jobs), 0, None, 4000,
        judge_desc + ("; Message Batches end within 24 h, so the job may wait that long" if batches else ""),
        runtime_minutes=24 * 60 + 30 if batches else None,
    )
    if windows:
        eg = ev["generation"]
        eval_new = conditions * 2 * n_jb * int(eg["max_new_tokens"])  # jailbreaks with and without persona
        eval_fwd = conditions * (n_mc * 4 * 100 + n_ppl * (avg_prompt + max_new))  # MC options ~100 tokens each
        plan.stages["evaluate_capping"] = StagePlan(
            "evaluate_capping", 1, (generate_s(eval_new / int(eg["max_new_tokens"]) * avg_prompt, eval_new, int(ev["batch_size"]), gen_parallel)
                                    + forward_s(eval_fwd, 1)) / 3600,
            model_gpus, gen_gpu_gb if vllm else hf_gpu_gb, host_mb(cpu_kv_mb if vllm else 0, hf=not vllm),
            f"{conditions} conditions x ({n_jb} jailbreaks, {n_mc} MC items, {n_ppl} perplexity texts)",
        )
    if config["drift"]["enabled"]:
        d = config["drift"]
        convs = len(d["domains"]) * int(d["conversations_per_domain"])
        turns = int(d["turns"])
        new = convs * turns * (int(d["max_new_tokens"]) + int(d["user_max_new_tokens"]))
        context = convs * sum(t * (int(d["max_new_tokens"]) + int(d["user_max_new_tokens"])) for t in range(1, turns + 1))
        plan.stages["drift"] = StagePlan(
            "drift", 1, generate_s(context, new, convs, gen_parallel) / 3600, model_gpus,
            gen_gpu_gb if vllm else hf_gpu_gb, host_mb(cpu_kv_mb if vllm else 0, hf=not vllm), f"{convs} conversations x {turns} turns",
        )
        if config["drift_analysis"]["enabled"]:
            # one HF forward pass per user message (embeddings); the regression itself is negligible
            plan.stages["drift_analysis"] = StagePlan(
                "drift_analysis", 1, forward_s(convs * turns * (int(d["user_max_new_tokens"]) + a.template_tokens), 1) / 3600,
                hf_gpus, hf_gpu_gb, host_mb(), f"embeddings of {convs * turns} user messages, ridge regression",
            )
    if trait_set:
        _plan_traits(plan, config, settings, trait_set, a, generate_s, forward_s, host_mb, cpu_kv_mb, model_gpus,
                     gen_gpu_gb if vllm else hf_gpu_gb, gen_parallel, concurrency, vllm)
    return plan


def _plan_traits(
    plan: RunPlan, config: Mapping[str, Any], settings: Mapping[str, Any], trait_set: Mapping[str, Any], a: Assumptions,
    generate_s: Any, forward_s: Any, host_mb: Any, cpu_kv_mb: float, model_gpus: int, gpu_gb: float | None, parallel: int,
    concurrency: int, vllm: bool,
) -> None:
    """The ``trait_vectors`` stage: generation of every trait reply, its judge calls, and the extraction pass."""
    tv = config["trait_vectors"]
    n_pairs, n_q = int(tv["pairs_per_trait"]), int(tv["questions_per_trait"])
    max_new = int(tv["max_new_tokens"] or settings["generation"]["max_new_tokens"])
    replies = prompt_chars = judge_chars = 0
    for trait in trait_set.values():
        q_chars = sum(len(q) for q in trait.questions[:n_q])
        for pos, neg in trait.pairs[:n_pairs]:
            replies += 2 * n_q
            prompt_chars += n_q * (len(pos) + len(neg)) + 2 * q_chars
        rubric = len(trait.eval_prompt) - len("{question}") - len("{answer}")
        judge_chars += 2 * n_pairs * (n_q * (rubric + max_new * a.chars_per_token) + q_chars)
    prompt_tokens = _tokens(prompt_chars, a) + replies * a.template_tokens
    generated = replies * max_new
    judge_cfg = dict(tv["judge"] or settings["judge"])
    if judge_cfg.get("backend", "offline") == "offline":
        from ..judges.trait_rules import MODEL as TRAIT_RULES

        judge_cfg["model"] = TRAIT_RULES  # the offline judge's 0-100 rules
    plan.trait_replies = replies
    plan.trait_judge_desc, plan.trait_judge_usd = _judge_cost(judge_cfg, replies, int(_tokens(judge_chars, a)))
    hours = (generate_s(prompt_tokens, generated, concurrency, parallel) + forward_s(prompt_tokens + generated, 1)) / 3600
    plan.stages["trait_vectors"] = StagePlan(
        "trait_vectors", 1, hours + _judge_hours(judge_cfg, replies), model_gpus, gpu_gb,
        host_mb(cpu_kv_mb if vllm else 0, hf=True),
        f"{len(trait_set)} traits x {n_pairs} pairs x {n_q} questions x 2 sides = {replies:,} replies of {max_new} tokens; "
        f"judge {plan.trait_judge_desc}: {_usd(plan.trait_judge_usd)}",
    )


def _judge_hours(cfg: Mapping[str, Any], calls: float) -> float:
    backend = cfg.get("backend", "offline")
    if backend == "anthropic" and cfg.get("use_batches"):
        return 1.0  # Message Batches usually end within the hour (at most 24 h: the job's runtime allows that)
    if backend in ("anthropic", "openai"):
        rpm = float(cfg.get("requests_per_minute") or 60 * int(cfg.get("max_concurrency", 4)))
        return calls / rpm / 60
    return calls / 2000 / 3600  # offline heuristic: thousands per second; the local judge: a forward pass each


def plan_workflow(
    config: Mapping[str, Any], runs: Mapping[str, tuple[Mapping[str, Any], Any]], role_set: RoleSet,
    eval_files: Mapping[str, str], assumptions: Assumptions | None = None, source: str = "",
    trait_set: Mapping[str, Any] | None = None,
) -> WorkflowPlan:
    """The plan of every run: ``runs`` maps a run name to its resolved settings and model facts;
    ``trait_set`` (name -> :class:`assistant_axis.traits.Trait`) sizes the trait_vectors stage when it is on."""
    a = assumptions or Assumptions(gpu_memory_gb=float(config.get("gpu_memory_gb", Assumptions.gpu_memory_gb)))
    return WorkflowPlan(
        {run: plan_run(config, run, s, facts, role_set, eval_files, a, trait_set) for run, (s, facts) in runs.items()}, a, source
    )


def rule_resources(plan: WorkflowPlan, run: str, stage: str) -> dict[str, int]:
    """``gpu``, ``mem_mb`` and ``runtime`` (minutes) a job of ``stage`` asks for in ``run``.

    Sized from the model (weights, KV cache, working memory) and the estimated time; site values
    (partition, account, CPUs) stay in the SLURM profile, whose ``set-resources`` still override these.
    """
    stage_plan = plan.runs[run].stages.get(stage)
    if stage_plan is None:  # a stage the run does not use (capping off, drift off): never scheduled
        return {"gpu": 0, "mem_mb": 4000, "runtime": 60}
    return stage_plan.resources(plan.assumptions.runtime_margin)


# ------------------------------------------------------------------------------------------------
# text


def _size(n_bytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes:.0f} B"


def _count(n: float) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} G"
    if n >= 1e6:
        return f"{n / 1e6:.1f} M"
    if n >= 1e4:
        return f"{n / 1e3:.1f} k"
    return f"{n:,.0f}"


def _hours(h: float) -> str:
    return f"{h * 60:.1f} min" if h < 1 else f"{h:.1f} h"


def _usd(usd: float | None) -> str:
    return "unknown (no price for this model; set price_usd_per_mtok)" if usd is None else f"${usd:,.2f}"


def _windows(windows: Sequence[Sequence[int]]) -> str:
    return ", ".join(f"[{a}, {b})" for a, b in windows)


def format_run(p: RunPlan, margin: float) -> list[str]:
    f = p.facts
    params = f"~{f.n_parameters / 1e9:.1f} B parameters" if f.n_parameters and f.n_parameters >= 1e9 else (
        f"~{f.n_parameters / 1e6:.0f} M parameters" if f.n_parameters else "parameters unknown")
    lines = [
        f"== {p.run}: {p.model} ({f.total_layers} layers, hidden {f.hidden_size}, {params}, weights {_size(p.weight_bytes)} "
        f"at {p.dtype_bytes * 8}-bit)",
        f"   target layer {p.target_layer}; capping: "
        + (f"windows {_windows(p.windows)}{' (derived from the layer count)' if p.windows_derived else ''} x percentiles "
           + " ".join(f"{x:g}" for x in p.percentiles) if p.windows else "off (no calibration or capping evaluation)"),
        f"   device {p.device_note}; {p.gpus} GPU(s) per model job",
        f"   responses          {p.responses:,} ({p.roles} roles x {p.prompts} prompts x {p.questions} questions"
        + (f" + default {p.default_prompts} x {p.questions})" if p.default_prompts else ")"),
        f"   tokens             {_count(p.generated_tokens)} generated at most, {_count(p.prompt_tokens)} prompt, "
        f"{_count(p.forward_tokens)} through extraction",
        f"   judge              {p.judge_calls:,} calls, {p.judge_desc}: {_usd(p.judge_usd)}",
        f"   capping-eval judge {p.eval_judge_calls:,} calls, {p.eval_judge_desc}: {_usd(p.eval_judge_usd)}",
        *([f"   trait judge        {p.trait_replies:,} calls, {p.trait_judge_desc}: {_usd(p.trait_judge_usd)}"] if p.trait_replies else []),
        f"   activations        {_size(p.activation_bytes)} on disk ({p.storage_dtype}, {len(p.stored)} of "
        f"{f.total_layers} layers); role_vectors/calibrate hold one shard ({_size(p.largest_shard_bytes)}) and one "
        f"role ({_size(p.role_bytes_float32)} float32) at a time",
    ]
    lines.append("   stage              jobs  time/job    GPUs  GPU mem/GPU    GPU-h    SLURM resources per job")
    for s in p.stages.values():
        r = s.resources(margin)
        mem = "-" if s.gpu_memory_gb is None else f"{s.gpu_memory_gb:.1f} GB"
        lines.append(
            f"   {s.stage:<18} {s.jobs:>4}  {_hours(s.hours_per_job):>9}  {s.gpus:>5}  {mem:>11}  {s.gpu_hours:>7.1f}    "
            f"gpu={r['gpu']} mem_mb={r['mem_mb']} runtime={r['runtime']}"
        )
    for s in p.stages.values():
        if s.note:
            lines.append(f"   ({s.stage}: {s.note})")
    lines.append(f"   total              {p.gpu_hours:.1f} GPU-hours; judge cost {_usd(p.judge_total_usd)}")
    return lines


def format_plan(plan: WorkflowPlan) -> str:
    """The plan as text: one block per run, then totals and the assumptions."""
    a = plan.assumptions
    head = f"assistant-axis plan{' for ' + plan.source if plan.source else ''}: {len(plan.runs)} run(s): {', '.join(plan.runs)}"
    lines = [head]
    for run_plan in plan.runs.values():
        lines += format_run(run_plan, a.runtime_margin)
        usable = a.gpu_memory_gb * a.usable_share
        for s in run_plan.stages.values():
            if s.gpu_memory_gb is not None and s.gpu_memory_gb > usable:
                lines.append(f"   WARNING: {s.stage} needs {s.gpu_memory_gb:.0f} GB per GPU, more than the {usable:.0f} GB usable "
                             f"of a {a.gpu_memory_gb:g} GB GPU: raise models.{run_plan.run}.gpus")
    usd = [p.judge_total_usd for p in plan.runs.values()]
    total_usd = None if any(u is None for u in usd) else sum(u for u in usd if u is not None)
    lines.append(
        f"== all runs: {sum(p.gpu_hours for p in plan.runs.values()):.1f} GPU-hours, judge cost {_usd(total_usd)}, "
        f"activations {_size(sum(p.activation_bytes for p in plan.runs.values()))}"
    )
    lines.append(f"assumptions: {a.describe()}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# check everything, then plan


class PlanError(ValueError):
    """A config, role, question or data file, or a model reference, is unusable: one line per problem,
    naming the file, the field and the fix."""


@dataclass
class Prepared:
    """A checked workflow: the filled config, the role set, each run's settings and facts, the plan."""

    config: dict[str, Any]
    role_set: RoleSet
    runs: dict[str, tuple[dict[str, Any], Any]]
    plan: WorkflowPlan


# data files a null config value stands for, relative to the workflow's folder
SHIPPED = {
    "jailbreaks": "resources/jailbreaks/jailbreaks.jsonl",
    "harm_rubric": "resources/jailbreaks/harm_rubric.txt",
    "mc_file": "resources/capability/mc.jsonl",
    "seeds_file": "resources/drift/seeds.json",
    "traits_dir": "resources/traits",
}


def data_files(config: Mapping[str, Any], basedir: str | Path) -> dict[str, str]:
    """The evaluation and drift data files a config uses: its own, or (null) the shipped ones."""
    ev, drift = config["capping_eval"], config["drift"]
    given = {"jailbreaks": ev["jailbreaks"], "harm_rubric": ev["harm_rubric"], "mc_file": ev["mc_file"],
             "seeds_file": drift["seeds_file"], "traits_dir": config["trait_vectors"]["traits_dir"]}
    return {k: v or str(Path(basedir) / SHIPPED[k]) for k, v in given.items()}


def prepare(
    raw_config: Mapping[str, Any], schema_path: str | Path, basedir: str | Path, config_files: Sequence[str] = (),
    assumptions: Assumptions | None = None,
) -> Prepared:
    """Check a workflow config completely, before any job, and plan it.

    Checked: the config against the schema (types, ranges, NaN), each run against its model's
    facts (layers, heads; :func:`.config.check_run`), every role file and the questions file
    (:func:`assistant_axis.roles.check_role_set`), the data files, and each model reference (a
    missing local folder, or a hub id absent from the cache while offline, is one clear line and no
    network wait). Raises :class:`PlanError` with one line per problem.
    """
    from ..datafiles import check_data_files
    from ..models import ModelNotFoundError, describe_model
    from ..roles import RoleSetError, check_role_set
    from ..storage import InputError
    from ..traits import TraitSetError
    from .config import ConfigError, check_run, load_config, resolve_run

    where = ", ".join(str(f) for f in config_files) or "config"

    def named(msg: str) -> str:
        return "\n".join(f"{where}: {line}" if line.startswith("config key") else line for line in msg.splitlines())

    try:
        config = load_config(dict(raw_config), schema_path)
        role_set = check_role_set(
            config["roles_dir"], config["roles"], config["questions_file"], n_prompts=config["prompts_per_role"],
            n_default_prompts=config["default_prompts"], n_questions=config["questions_per_role"],
        )
        files = data_files(config, basedir)
        for key, path in files.items():
            if key == "traits_dir":
                continue  # a folder, checked below when the stage is on
            if not Path(path).is_file():
                section = "drift" if key == "seeds_file" else "capping_eval"
                raise ConfigError(f"config key '{section}.{key}': file {path} not found; fix the path (null = the shipped file)")
        check_data_files(files, config)
        trait_set = check_analyses(config, files["traits_dir"])
        runs: dict[str, tuple[dict[str, Any], Any]] = {}
        facts_of: dict[str, Any] = {}
        for run, entry in config["models"].items():
            spec = entry["model"]
            if spec not in facts_of:
                try:
                    facts_of[spec] = describe_model(spec)
                except (ModelNotFoundError, ValueError, RuntimeError) as exc:
                    raise ConfigError(f"config key 'models.{run}.model': {exc}") from exc
            settings = resolve_run(config, run, facts_of[spec])
            check_run(config, run, settings, facts_of[spec])
            runs[run] = (settings, facts_of[spec])
    except (ConfigError, RoleSetError, TraitSetError, InputError) as exc:
        raise PlanError(named(str(exc))) from exc
    plan = plan_workflow(config, runs, role_set, files, assumptions, source=where, trait_set=trait_set)
    return Prepared(config, role_set, runs, plan)


def check_analyses(config: Mapping[str, Any], traits_dir: str) -> dict[str, Any] | None:
    """Check the analysis stages' settings before any job; the trait set (when trait_vectors is on) for the plan.

    Raises :class:`.config.ConfigError` or :class:`assistant_axis.traits.TraitSetError` naming the key or file.
    """
    from ..traits import load_traits
    from .config import ConfigError

    if config["drift_analysis"]["enabled"] and not config["drift"]["enabled"]:
        raise ConfigError("config key 'drift_analysis.enabled': it analyses the drift stage's conversations; set drift.enabled: true too")
    tv = config["trait_vectors"]
    if not tv["enabled"]:
        return None
    if tv["judge"] is not None and tv["judge"].get("backend") == "local":
        raise ConfigError("config key 'trait_vectors.judge.backend': the local judge scores 0-3 only; use offline, anthropic or openai")
    if tv["min_count"] > tv["pairs_per_trait"] * tv["questions_per_trait"]:
        raise ConfigError(
            f"config key 'trait_vectors.min_count': {tv['min_count']} is more than the "
            f"{tv['pairs_per_trait'] * tv['questions_per_trait']} replies a trait gets per side (pairs_per_trait x questions_per_trait)"
        )
    return load_traits(traits_dir, tv["traits"], n_pairs=tv["pairs_per_trait"], n_questions=tv["questions_per_trait"])


def plan_as_dict(plan: WorkflowPlan) -> dict[str, Any]:
    """The plan's figures as plain data (``assistant-axis plan --json``)."""
    out: dict[str, Any] = {"assumptions": vars(plan.assumptions), "runs": {}}
    for run, p in plan.runs.items():
        out["runs"][run] = {
            "model": p.model, "device": p.device, "gpus": p.gpus, "n_parameters": p.facts.n_parameters,
            "weight_bytes": p.weight_bytes, "hf_gpus": p.hf_gpus, "target_layer": p.target_layer, "capping_windows": p.windows,
            "windows_derived": p.windows_derived, "responses": p.responses, "prompt_tokens": p.prompt_tokens,
            "generated_tokens": p.generated_tokens, "forward_tokens": p.forward_tokens, "judge_calls": p.judge_calls,
            "judge_usd": p.judge_usd, "capping_eval_judge_calls": p.eval_judge_calls, "capping_eval_judge_usd": p.eval_judge_usd,
            "storage_dtype": p.storage_dtype, "stored_layers": p.stored, "activation_bytes": p.activation_bytes,
            "gpu_hours": p.gpu_hours,
            "stages": {
                s.stage: {"jobs": s.jobs, "hours_per_job": s.hours_per_job, "gpus": s.gpus, "gpu_memory_gb": s.gpu_memory_gb,
                          "gpu_hours": s.gpu_hours, "resources": s.resources(plan.assumptions.runtime_margin)}
                for s in p.stages.values()
            },
        }
    return out
