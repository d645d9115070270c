"""The export's model card (README.md): what the critic is, what it was trained on, and how to load it.

Built from critic_config.json alone (training puts the facts there: phase, objective, data files with their
sha256, test metrics), so a re-saved or pushed export carries the same card.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CARD_NAME = "README.md"


def file_facts(paths: list[str]) -> list[dict]:
    """Each data file's path and, when it exists, its sha256 and size."""
    facts = []
    for path in paths:
        file = Path(path).expanduser()
        fact: dict = {"path": str(path)}
        if file.is_file():
            digest = hashlib.sha256()
            with file.open("rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
            fact |= {"sha256": digest.hexdigest(), "bytes": file.stat().st_size}
        facts.append(fact)
    return facts


def model_card(config: dict, has: set[str]) -> str:
    """The README.md of an export whose critic_config.json is `config`; `has` names the subdirectories written
    (adapter, backbone, sequence_classification)."""
    backbone = config["backbone"]
    base = backbone["name_or_path"]
    hub_base = None if backbone.get("local") else base
    tags = ["autocritic", "reward-model"] + (["peft", "lora"] if "adapter" in has else [])
    front = {"library_name": "peft" if "adapter" in has else "transformers", "tags": tags}
    if hub_base:
        front["base_model"] = hub_base
    if config.get("license"):
        front["license"] = config["license"]
    lines = ["---", *(f"{k}: {json.dumps(v)}" for k, v in front.items()), "---", ""]
    lines += [
        "# Critic (autocritic)",
        "",
        "A critic head on a causal language model: it scores a (prompt, response) pair, higher for a better "
        "response, as one logit.",
        "",
        f"- Base model: `{base}`" + (" (a local directory, relative to this export)" if backbone.get("local") else ""),
        f"- Backbone: {describe_mode(backbone, has)}",
        f"- Phase: {config.get('phase') or 'unknown'}" + started_from(config),
        f"- Head: {settings_text(head_settings(config['head']))}",
        f"- Objective: {settings_text(config['objective']) if config.get('objective') else 'unknown'}",
        f"- Template: `{json.dumps(config['template'])[1:-1]}`",
    ]
    lines += data_section(config.get("data"))
    lines += metrics_section(config.get("test_metrics"))
    loadable = backbone.get("absolute_path", base) if backbone.get("local") else base
    lines += usage_section(loadable, has, config.get("sequence_classification"))
    return "\n".join(lines) + "\n"


def describe_mode(backbone: dict, has: set[str]) -> str:
    mode = backbone["mode"]
    if mode == "frozen":
        return "frozen (not stored here: loaded from the base model)"
    if mode == "full":
        return "fully fine-tuned (`backbone/`)"
    merged = " and merged into `backbone/`" if "backbone" in has else ""
    return f"LoRA fine-tuned (a PEFT adapter of the base model in `adapter/`{merged})"


def started_from(config: dict) -> str:
    return f", starting from the head of `{config['started_from']}`" if config.get("started_from") else ""


ATTENTION_ONLY = ("window", "layers", "attention_heads", "tokens", "feedforward", "attention_dropout")


def head_settings(settings: dict) -> dict:
    """The settings that mean something for this kind of head."""
    kind = settings.get("kind")
    unused = (ATTENTION_ONLY if kind != "attention" else ()) + (("hidden_dim",) if kind == "linear" else ())
    return {k: v for k, v in settings.items() if k not in unused}


def settings_text(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None)


def data_section(data: dict | None) -> list[str]:
    if not data:
        return []
    lines = ["", "## Training data", ""]
    described = False
    for split in ("train", "val", "test"):
        for fact in data.get(f"{split}_files") or []:
            digest = f" sha256 `{fact['sha256']}`" if fact.get("sha256") else " (not found when exported)"
            lines.append(f"- {split}: `{fact['path']}`{digest}")
            described = True
    if data.get("hub_id"):
        lines.append(f"- hub data set: `{data['hub_id']}`")
        described = True
    if data.get("schema"):
        lines.append(f"- schema: {data['schema']}")
    return lines if described else []


def metrics_section(metrics: dict | None) -> list[str]:
    if not metrics:
        return []
    rows = [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(metrics.items())]
    return ["", "## Test metrics", "", "| metric | value |", "| --- | --- |", *rows]


def usage_section(base: str, has: set[str], sequence_classification: dict | None) -> list[str]:
    lines = [
        "",
        "## Load it",
        "",
        "With autocritic (this directory or its hub id):",
        "",
        "```python",
        "from autocritic.inference.generation import CriticGenerator",
        "",
        'critic = CriticGenerator.from_export("<this directory or hub id>", device="auto", dtype="auto")',
        'print(critic.score_texts(["<prompt>"], ["<response>"]))',
        "```",
    ]
    if "backbone" in has:
        lines += [
            "",
            "The language model alone (the critic head is `head.safetensors`):",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM",
            "",
            'model = AutoModelForCausalLM.from_pretrained("<this directory>/backbone")',
            "```",
        ]
    if "adapter" in has:
        lines += [
            "",
            "The language model alone, with plain PEFT (the critic head is `head.safetensors`):",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            "",
            f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "<this directory>/adapter")',
            "```",
        ]
    if "sequence_classification" in has:
        lines += [
            "",
            "As a plain sequence classifier (one logit, the critic's score; its tokenizer pads on the right):",
            "",
            "```python",
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
            "",
            'path = "<this directory>/sequence_classification"',
            "model, tokenizer = AutoModelForSequenceClassification.from_pretrained(path), AutoTokenizer.from_pretrained(path)",
            'scores = model(**tokenizer(["<rendered prompt + response>"], return_tensors="pt", padding=True)).logits[:, 0]',
            "```",
        ]
    elif sequence_classification and sequence_classification.get("reason"):
        lines += ["", f"No sequence-classification copy: {sequence_classification['reason']}."]
    return lines
