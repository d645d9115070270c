"""Does the critic rank answers to the same question? Critic vs the model's own likelihood, on held-out pairs.

Best-of-N needs a critic that prefers a right answer to a wrong one *for the same prompt*. On each held-out
(prompt, chosen = right, rejected = wrong) pair this prints how often the critic scores chosen above rejected,
and how often the backbone's own log-likelihood of the answer does (sum, mean and min over the answer's tokens):
the baseline, measured in the same run.

    python bench/within_problem.py outputs/finetune/<run>/export [--pairs data/offline/critic/pairs_test.jsonl] [--n 400]
"""

from __future__ import annotations

import argparse
import json

import torch

from autocritic.model.backbone import load_backbone
from autocritic.model.export import load_critic


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("export")
    parser.add_argument("--pairs", default="data/offline/critic/pairs_test.jsonl")
    parser.add_argument("--n", type=int, default=400)
    args = parser.parse_args()
    critic = load_critic(args.export)
    backbone = load_backbone(critic.config["backbone"]["name_or_path"]).eval()
    tokenizer = critic.tokenizer
    prompt_part = critic.template.split("{response}")[0]

    @torch.no_grad()
    def judge(prompt: str, response: str) -> dict[str, float]:
        prompt_ids = tokenizer(prompt_part.format(prompt=prompt))["input_ids"]
        ids = tokenizer(prompt_part.format(prompt=prompt) + response)["input_ids"]
        batch = torch.tensor([ids])
        score = critic.model(
            input_ids=batch, attention_mask=torch.ones_like(batch), prompt_lengths=torch.tensor([len(prompt_ids)])
        ).score.item()
        logprobs = backbone(input_ids=batch).logits[0, :-1].log_softmax(-1)
        answer = logprobs.gather(-1, batch[0, 1:, None])[:, 0][len(prompt_ids) - 1 :]
        return {
            "critic": score,
            "likelihood (sum)": answer.sum().item(),
            "likelihood (mean)": answer.mean().item(),
            "likelihood (min)": answer.min().item(),
        }

    with open(args.pairs) as f:
        pairs = [json.loads(line) for _, line in zip(range(args.n), f, strict=False)]
    wins: dict[str, int] = {}
    for pair in pairs:
        chosen, rejected = judge(pair["prompt"], pair["chosen"]), judge(pair["prompt"], pair["rejected"])
        for name in chosen:
            wins[name] = wins.get(name, 0) + (chosen[name] > rejected[name])
    print(f"{len(pairs)} held-out pairs from {args.pairs}; right answer ranked above the wrong one:")
    for name, count in wins.items():
        print(f"  {name:18s} {count / len(pairs):.3f}")
    print(f"critic / likelihood (sum): {wins['critic'] / max(wins['likelihood (sum)'], 1):.2f}x")


if __name__ == "__main__":
    main()
