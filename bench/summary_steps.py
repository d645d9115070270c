"""Step the summary memory's prompts one exchange at a time and count which summary steps the model gets right.

    python bench/summary_steps.py <export dir | offline backbone dir> [--newest-first]

The prompts are the ones `ConversationSummaryMemory` sends with the evaluation's compact prompt (greedy, 48 new
tokens, stop at a newline), on the memory suite's 160 held-out dialogues, each step fed the summary the model
wrote before. A step is right when it writes exactly the summary the training documents teach (fact appended
last, or first with --newest-first). "summary" is the share of dialogues whose final summary still names the
fact asked about: what the memory suite's summary recall follows.
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
    args = parser.parse_args()
    generator = load(args.model)
    dialogues = [
        d
        for d in map(parse_dialogue, EvalContext(generator).test_problems("dialogue", args.dialogues))
        if d.distance is not None
    ]
    settings = GenerationSettings(max_new_tokens=48, stop=("\n",))
    summaries = [""] * len(dialogues)
    counts = {"fact_steps": 0, "fact_steps_right": 0, "other_steps": 0, "other_steps_right": 0}
    for turn in range(max(len(d.exchanges) for d in dialogues)):
        active = [i for i, d in enumerate(dialogues) if turn < len(d.exchanges)]
        prompts = []
        for i in active:
            human, ai = dialogues[i].exchanges[turn]
            new_lines = f"{HUMAN_PREFIX}: {human}\n{AI_PREFIX}: {ai}"
            prompts.append(SUMMARY_PROMPTS["compact"].format(summary=summaries[i], new_lines=new_lines))
        for i, [sample] in zip(active, generator.generate(prompts, settings), strict=True):
            human = dialogues[i].exchanges[turn][0]
            taught = next_summary(summaries[i], human, args.newest_first)
            kind = "other_steps" if taught == summaries[i] else "fact_steps"
            counts[kind] += 1
            counts[f"{kind}_right"] += sample.text == taught
            summaries[i] = sample.text
    kept = sum(mentions(s, d.answer) for s, d in zip(summaries, dialogues, strict=True))
    print(json.dumps(counts | {"dialogues": len(dialogues), "summary": round(kept / len(dialogues), 4)}))


if __name__ == "__main__":
    main()
