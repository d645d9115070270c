"""Step the summary memory's prompts one exchange at a time and count which summary steps the model gets right.

    python bench/summary_steps.py <export dir | offline backbone dir> [--newest-first]

The prompts are the ones `ConversationSummaryMemory` sends with the evaluation's compact prompt (greedy, 48 new
tokens, stop at a newline), on the memory suite's 160 held-out dialogues, each step fed the summary the model
wrote before. A step is right when it writes exactly the summary the training documents teach (fact appended
last, or first with --newest-first). "summary" is the share of dialogues whose final summary still names the
fact asked about: what the memory suite's summary recall follows.

    python bench/summary_steps.py <export dir> --samples 8 [--temperature 0.8]

What a critic-guided summary memory could reach: each step is fed the taught summary so far, K summaries are
sampled, and a step counts as right for one sample on average ("single"), for any of the K ("pass@K": the
ceiling of any selector) and for the critic's highest-scored one ("critic@K"). "single_by_sentences" splits the
single-sample rate by the number of sentences the taught summary has. `--temperature 0` is greedy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from autocritic.evaluation.context import EvalContext
from autocritic.evaluation.memory import SUMMARY_PROMPTS, mentions, parse_dialogue
from autocritic.inference.generation import CriticGenerator, GenerationSettings
from autocritic.offline.pretrain import BUILD_INFO
from autocritic.offline.tasks import AI_PREFIX, HUMAN_PREFIX, next_summary


def load(path: Path) -> CriticGenerator:
    if not (path / BUILD_INFO).is_file():
        return CriticGenerator.from_export(path, batch_size=32, dtype="float32")
    from transformers import FalconForCausalLM

    from autocritic.model.backbone import load_tokenizer
    from autocritic.model.critic import CriticModel

    # A bare offline backbone: generation only, the untrained head is never read.
    return CriticGenerator(CriticModel(FalconForCausalLM.from_pretrained(path)).eval(), load_tokenizer(str(path)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--newest-first", action="store_true")
    parser.add_argument("--dialogues", type=int, default=160)
    parser.add_argument("--samples", type=int, default=0, help="K sampled summaries per step, teacher-forced")
    parser.add_argument("--temperature", type=float, default=0.8)
    args = parser.parse_args()
    generator = load(args.model)
    dialogues = [
        d
        for d in map(parse_dialogue, EvalContext(generator).test_problems("dialogue", args.dialogues))
        if d.distance is not None
    ]
    if args.samples:
        print(json.dumps(sampled_steps(generator, dialogues, args)))
        return
    settings = GenerationSettings(max_new_tokens=48, stop=("\n",))
    summaries = [""] * len(dialogues)
    counts = {"fact_steps": 0, "fact_steps_right": 0, "other_steps": 0, "other_steps_right": 0}
    for turn in range(max(len(d.exchanges) for d in dialogues)):
        active = [i for i, d in enumerate(dialogues) if turn < len(d.exchanges)]
        prompts = [step_prompt(summaries[i], dialogues[i].exchanges[turn]) for i in active]
        for i, [sample] in zip(active, generator.generate(prompts, settings), strict=True):
            human = dialogues[i].exchanges[turn][0]
            taught = next_summary(summaries[i], human, args.newest_first)
            kind = "other_steps" if taught == summaries[i] else "fact_steps"
            counts[kind] += 1
            counts[f"{kind}_right"] += sample.text == taught
            summaries[i] = sample.text
    kept = sum(mentions(s, d.answer) for s, d in zip(summaries, dialogues, strict=True))
    print(json.dumps(counts | {"dialogues": len(dialogues), "summary": round(kept / len(dialogues), 4)}))


def step_prompt(summary: str, exchange: tuple[str, str]) -> str:
    human, ai = exchange
    return SUMMARY_PROMPTS["compact"].format(summary=summary, new_lines=f"{HUMAN_PREFIX}: {human}\n{AI_PREFIX}: {ai}")


def sampled_steps(generator: CriticGenerator, dialogues: list, args: argparse.Namespace) -> dict:
    """Single-sample, pass@K and critic@K rates of the summary steps, each fed the taught summary so far."""
    k = args.samples
    sampling = {"do_sample": True, "temperature": args.temperature} if args.temperature > 0 else {}
    settings = GenerationSettings(max_new_tokens=48, stop=("\n",), n=k, seed=0, **sampling)
    taught = [""] * len(dialogues)
    by_sentences: dict[int, list[float]] = {}  # sentences in the taught summary: [right, steps]
    counts = {f"{kind}_{what}": 0.0 for kind in ("fact", "other") for what in ("steps", "single", "pass", "critic")}
    for turn in range(max(len(d.exchanges) for d in dialogues)):
        active = [i for i, d in enumerate(dialogues) if turn < len(d.exchanges)]
        prompts = [step_prompt(taught[i], dialogues[i].exchanges[turn]) for i in active]
        for i, samples in zip(active, generator.generate(prompts, settings), strict=True):
            target = next_summary(taught[i], dialogues[i].exchanges[turn][0], args.newest_first)
            kind = "other" if target == taught[i] else "fact"
            right = [sample.text == target for sample in samples]
            counts[f"{kind}_steps"] += 1
            counts[f"{kind}_single"] += sum(right) / k
            counts[f"{kind}_pass"] += any(right)
            counts[f"{kind}_critic"] += right[max(range(k), key=lambda j: samples[j].score)]
            tally = by_sentences.setdefault(target.count("."), [0.0, 0])
            tally[0] += sum(right) / k
            tally[1] += 1
            taught[i] = target
    rates = {
        f"{kind}_steps_{what}@{k}" if what != "single" else f"{kind}_steps_single": round(
            counts[f"{kind}_{what}"] / max(1, counts[f"{kind}_steps"]), 4
        )
        for kind in ("fact", "other")
        for what in ("single", "pass", "critic")
    }
    split = {n: round(right / steps, 4) for n, (right, steps) in sorted(by_sentences.items())}
    head = {"samples": k, "temperature": args.temperature, "fact_steps": int(counts["fact_steps"])}
    return head | rates | {"single_by_sentences": split}


if __name__ == "__main__":
    main()
