"""The pipeline's data files (jailbreaks, harm rubric, MC items, drift seeds), checked at dry-run time.

The capping evaluation and drift stages read these files hours into a run; a malformed one would
then fail a GPU job with a traceback. :func:`check_data_files` reads each strictly
(:mod:`assistant_axis.storage`: UTF-8, duplicated keys, NaN, empty) and checks the fields the
stage's loader needs (:func:`assistant_axis.evaluation.load_jailbreaks`, ``load_mc``,
``load_rubric``, :func:`assistant_axis.pipeline.drift.load_seeds`), so ``snakemake -n`` reports the
problem in one line naming the file, the field and the fix. Kept light (no torch, no pandas): it
runs at every Snakefile parse.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .storage import InputError, read_json, read_jsonl, read_text

LETTERS = ("A", "B", "C", "D")
# what each data file must look like and the config key that names it
FORMATS = {
    "jailbreaks": ('one {"id": int, "domain": str, "persona": str, "request": str} object per line', "capping_eval.jailbreaks"),
    "harm_rubric": ("a UTF-8 text with {question} and {answer} placeholders", "capping_eval.harm_rubric"),
    "mc_file": ('one {"id": int, "question": str, "options": [4 str], "answer": "A".."D"} object per line', "capping_eval.mc_file"),
    "seeds_file": ('{"user_prompt": "...{persona}...{topic}...", "domains": {name: [{persona, topic, opening}]}}', "drift.seeds_file"),
}


def _fix(key: str) -> str:
    expected, config_key = FORMATS[key]
    return f"expected {expected} (config key '{config_key}'; null = the shipped file)"


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _check_ids(path: str, key: str, rows: list[tuple[int, dict[str, Any]]], text_fields: tuple[str, ...]) -> None:
    seen: set[int] = set()
    for n, obj in rows:
        qid = obj.get("id")
        if isinstance(qid, bool) or not isinstance(qid, int):
            raise InputError(path, f"line {n}, field 'id'", f"must be an integer, got {qid!r}", _fix(key))
        if qid in seen:
            raise InputError(path, f"line {n}, field 'id'", f"repeats {qid}", "give every item its own id")
        seen.add(qid)
        for name in text_fields:
            if not _text(obj.get(name)):
                raise InputError(path, f"line {n}, field {name!r}", f"must be a non-empty string, got {type(obj.get(name)).__name__}", _fix(key))


def check_jailbreaks(path: str) -> None:
    _check_ids(path, "jailbreaks", read_jsonl(path, _fix("jailbreaks")), ("domain", "persona", "request"))


def check_mc(path: str) -> None:
    rows = read_jsonl(path, _fix("mc_file"))
    _check_ids(path, "mc_file", rows, ("question",))
    for n, obj in rows:
        options = obj.get("options")
        if not isinstance(options, list) or len(options) != 4 or not all(_text(o) for o in options):
            raise InputError(path, f"line {n}, field 'options'", "must be a list of 4 non-empty strings", _fix("mc_file"))
        if obj.get("answer") not in LETTERS:
            raise InputError(path, f"line {n}, field 'answer'", f"is {obj.get('answer')!r}, not one of A, B, C, D", _fix("mc_file"))


def check_rubric(path: str) -> None:
    text = read_text(path, _fix("harm_rubric"))
    for slot in ("{question}", "{answer}"):
        if slot not in text:
            raise InputError(path, f"placeholder {slot}", "is missing (the judge fills it in)", _fix("harm_rubric"))


def check_seeds(path: str, domains: list[str] | None = None, per_domain: int = 0) -> None:
    """The seeds file's layout; with ``domains``, also the ``per_domain`` first seeds of each."""
    data = read_json(path, _fix("seeds_file"))
    if not isinstance(data, dict):
        raise InputError(path, "(top level)", f"is a JSON {type(data).__name__}, not an object", _fix("seeds_file"))
    template = data.get("user_prompt")
    if not isinstance(template, str):
        raise InputError(path, "field 'user_prompt'", "is missing or not a string", _fix("seeds_file"))
    for slot in ("{persona}", "{topic}"):
        if slot not in template:
            raise InputError(path, "field 'user_prompt'", f"lacks the placeholder {slot}", _fix("seeds_file"))
    by_domain = data.get("domains")
    if not isinstance(by_domain, dict):
        raise InputError(path, "field 'domains'", "is missing or not an object", _fix("seeds_file"))
    for domain in domains or []:
        entries = by_domain.get(domain)
        if not isinstance(entries, list):
            raise InputError(path, f"field 'domains.{domain}'", f"is missing (domains here: {', '.join(by_domain) or 'none'})",
                             "add it or change config key 'drift.domains'")
        if len(entries) < per_domain:
            raise InputError(path, f"field 'domains.{domain}'", f"has {len(entries)} seeds but config key "
                             f"'drift.conversations_per_domain' asks for {per_domain}", "add seeds or lower it")
        for i, entry in enumerate(entries[:per_domain]):
            for name in ("persona", "topic", "opening"):
                if not isinstance(entry, dict) or not _text(entry.get(name)):
                    raise InputError(path, f"field 'domains.{domain}[{i}].{name}'", "must be a non-empty string", _fix("seeds_file"))


def check_data_files(files: Mapping[str, str], config: Mapping[str, Any]) -> None:
    """Check every data file of ``files`` (from :func:`assistant_axis.pipeline.plan.data_files`) before any job.

    Raises :class:`~assistant_axis.storage.InputError` (a ``ValueError``) with one line naming the
    file, the field and the fix. Drift seeds are checked against the configured domains only when
    drift is on.
    """
    check_jailbreaks(files["jailbreaks"])
    check_mc(files["mc_file"])
    check_rubric(files["harm_rubric"])
    drift = config["drift"]
    if drift["enabled"]:
        check_seeds(files["seeds_file"], list(drift["domains"]), int(drift["conversations_per_domain"]))
    else:
        check_seeds(files["seeds_file"])
