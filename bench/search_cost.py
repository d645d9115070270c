"""Critic-guided beam search vs plain sampling: what the search costs per sampled token.

    python bench/search_cost.py --ckpt EXPORT [--problems 32] [--shape 4x2] [--repeats 3] [--threads 1] [--batch 8]
        [--family chain|countdown] [--resample 1 --widen 1 --threshold 0.5]

`--shape KxBxD` times the beam valued by greedy rollouts (expand x beam x branch depths): its rollouts are steps
the same stepper samples (one greedy step per call for every open rollout), so they count as its own sampling;
`--resample` and `--widen` time the rollout search that samples repeated steps again and widens doubted searches.

Search side: `search` with the step critic (`CriticStepper`): each expansion samples `expand` next steps per kept
state in one batch, scores every step from the state its last token produced (no second pass), and each child
keeps its KV cache, so a shared prefix is never run again. It runs one prompt at a time, then `--batch` prompts in
lockstep (`search_many`, as `evaluate.py suites=[search]` runs them): the same trees, fuller batches.
Sampling side: what a user without autocritic runs, `backbone.generate(num_return_sequences=expand x beam)` with
transformers' stop string "\\n\\n" (the end of an answer), no critic.
Both sample at the same temperature from the same held-out prompts (`--family`, the chain family by default). Each side's cost is its wall
time over the tokens it sampled (a row that finished early is not counted, on either side); the ratio of the two
is the search's overhead per sampled token (target ≤ 1.1x). Medians over `repeats` runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from autocritic.entry import quiet_libraries
from autocritic.inference.generation import CriticGenerator
from autocritic.inference.search import SearchSettings, search_many
from autocritic.inference.stepper import CriticStepper
from autocritic.offline.tasks import make_splits, prompt_of

STOP = "\n\n"


def test_prompts(problems: int, family: str = "chain", seed: int = 0) -> list[str]:
    return [prompt_of(p) for p in make_splits(seed, train=0, val=0, test=problems, families=[family])["test"]]


def run_search(
    stepper: CriticStepper, prompts: list[str], settings: SearchSettings, batch: int = 1
) -> tuple[float, int, float, float]:
    """Wall time, sampled tokens, the time in the stepper's sampling (each prompt's prefill and the step loops), and
    the time in the critic head."""
    spent = {"sampling": 0.0, "head": 0.0}

    def timed(function, key):
        def run(*args, **kwargs):
            start = time.perf_counter()
            out = function(*args, **kwargs)
            spent[key] += time.perf_counter() - start
            return out

        return run

    stepper.root = timed(stepper.root, "sampling")
    stepper._sample_steps = timed(stepper._sample_steps, "sampling")
    stepper.model.score_at = timed(stepper.model.score_at, "head")
    try:
        start = time.perf_counter()
        tokens = sum(result.sampled_tokens for result in search_many(stepper, prompts, settings, batch=batch))
        return time.perf_counter() - start, tokens, spent["sampling"], spent["head"]
    finally:
        del stepper.root, stepper._sample_steps, stepper.model.score_at


@torch.no_grad()
def run_sampling(
    generator: CriticGenerator, prompts: list[str], rows: int, settings: SearchSettings
) -> tuple[float, int]:
    backbone, tokenizer = generator.model.backbone, generator.tokenizer
    stop_ids = tokenizer(STOP)["input_ids"]
    tokens, start = 0, time.perf_counter()
    for prompt in prompts:
        ids = torch.tensor([generator._encode_prompt(prompt)])
        out = backbone.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=settings.temperature,
            top_k=0,
            num_return_sequences=rows,
            max_new_tokens=settings.max_depth * settings.max_step_tokens,
            stop_strings=[STOP],
            tokenizer=tokenizer,
            pad_token_id=generator.pad_id,
            eos_token_id=sorted(generator.eos_ids),
        )
        for row in out[:, ids.shape[1] :].tolist():
            tokens += sampled_length(row, stop_ids, generator)
    return time.perf_counter() - start, tokens


def sampled_length(row: list[int], stop_ids: list[int], generator: CriticGenerator) -> int:
    """Tokens up to and including the eos or the stop string, as the sampler produced them."""
    for end in range(len(row)):
        if row[end] in generator.eos_ids or row[max(0, end + 1 - len(stop_ids)) : end + 1] == stop_ids:
            return end + 1
    return len(row)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True, help="an export of a step critic (experiment=steps)")
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--shape", default="4x2", help="expand x beam, or expand x beam x branch depths: rollouts")
    parser.add_argument("--family", default="chain", help="the step family of the export's world: chain | countdown")
    parser.add_argument("--resample", type=int, default=0, help="rounds that sample repeated steps again")
    parser.add_argument("--widen", type=int, default=0, help="rollouts: widening rounds of doubted searches")
    parser.add_argument("--threshold", type=float, default=0.5, help="widen: answers valued below are doubted")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8, help="prompts searched in lockstep in the second mode")
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    expand, beam, *depth = (int(x) for x in args.shape.split("x"))
    settings = SearchSettings(
        expand=expand,
        beam=beam,
        max_step_tokens=24,
        rollouts=bool(depth),
        branch_depth=depth[0] if depth else 1,
        resample=args.resample,
        widen=args.widen,
        threshold=args.threshold,
    )
    generator = CriticGenerator.from_export(args.ckpt)
    stepper = CriticStepper(generator)
    prompts = test_prompts(args.problems, args.family)
    modes = {"one at a time": 1, f"{args.batch} in lockstep": args.batch}
    for batch in modes.values():
        run_search(stepper, prompts[:2], settings, batch)  # warm-up
    run_sampling(generator, prompts[:2], expand * beam, settings)
    searched: dict[str, list] = {mode: [] for mode in modes}
    own: dict[str, list] = {mode: [] for mode in modes}
    headless: dict[str, list] = {mode: [] for mode in modes}
    sampled = []
    for repeat in range(args.repeats):
        seeded = replace(settings, seed=repeat)
        for mode, batch in modes.items():
            seconds, tokens, sampling, head = run_search(stepper, prompts, seeded, batch)
            searched[mode].append((seconds, tokens))
            own[mode].append(seconds / sampling)
            headless[mode].append((seconds - head) / sampling)
        torch.manual_seed(repeat)
        sampled.append(run_sampling(generator, prompts, expand * beam, settings))
    per_token = lambda runs: statistics.median(s / t * 1e3 for s, t in runs)  # noqa: E731
    sample_ms = per_token(sampled)
    head = generator.model.head.settings
    print(
        f"{len(prompts)} {args.family} problems, shape {args.shape} (resample {args.resample}, widen {args.widen}), "
        f"{args.threads} thread(s), {args.repeats} repeats, "
        f"head {head.kind} x{head.members} (window {head.window})"
    )
    for mode in modes:
        runs = searched[mode]
        print(
            f"{mode}: ratio search / its own sampling: {statistics.median(own[mode]):.2f}x (target <= 1.1x); "
            f"without the head's own time: {statistics.median(headless[mode]):.2f}x"
        )
        print(
            f"  search   : {statistics.median(t for _, t in runs):.0f} tokens, "
            f"{statistics.median(s for s, _ in runs):.2f} s, {per_token(runs):.3f} ms/token; "
            f"per sampled token, search / generate: {per_token(runs) / sample_ms:.2f}x"
        )
    print(
        f"sampling : {statistics.median(t for _, t in sampled):.0f} tokens, "
        f"{statistics.median(s for s, _ in sampled):.2f} s, {sample_ms:.3f} ms/token "
        f"(generate, num_return_sequences={expand * beam}, one prompt at a time)"
    )


if __name__ == "__main__":
    main()
