"""Best-of-N with critic scores vs generation alone: what the critic costs on top of sampling.

    python bench/rerank_overhead.py [--ckpt EXPORT] [--problems 64] [--n 8] [--repeats 3] [--threads 1]

Both sides generate the same tokens: `CriticGenerator.generate` (each prompt prefilled once for its N samples,
critic scores read from the generation's own forward passes, then the best of N picked) and what a user without
autocritic runs, `backbone.generate(num_return_sequences=N)` (each sample runs its copy of the prompt), with the
same prompts (the rerank suite's few-shot prompts), batches, sampling settings, seeds and stop string, decoded and
cut the same way.
Run twice: with the stop string (as the rerank suite runs) and without (every row runs max_new_tokens).
Prints the median wall times and their ratio (target ≤ 1.05x), checks that both sides sampled the same texts, and
times the head itself (`score_at` over the recorded states) as a share of the critic side: what the critic costs
over the same generation without it, a figure the noise of two separate runs does not blur.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch
from omegaconf import OmegaConf

from autocritic.entry import quiet_libraries
from autocritic.evaluation.run import find_export
from autocritic.inference.generation import CriticGenerator, GenerationSettings, find_stop
from autocritic.inference.rerank import best_of_n
from autocritic.offline.generate import GenerateSettings
from autocritic.offline.tasks import SPLITS, few_shot_prompts, make_splits


def rerank_prompts(problems: int, seed: int = 0) -> list[str]:
    offline = GenerateSettings()
    splits = make_splits(seed, train=offline.train_problems, val=0, test=problems, families=["arithmetic"])
    return few_shot_prompts(splits["test"], splits["train"], offline.shots, seed + SPLITS.index("test"))


@torch.no_grad()
def plain_generate(
    generator: CriticGenerator, prompts: list[str], settings: GenerationSettings
) -> list[list[str]]:
    """What a user without the critic runs: `generate` with transformers' stop strings, batched and seeded exactly as
    CriticGenerator batches and seeds, texts decoded and cut at the stop."""
    tokenizer, backbone = generator.tokenizer, generator.model.backbone
    encoded = [tokenizer(generator.template.render_prompt(p))["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    per_batch = max(1, generator.batch_size // settings.n)
    results: list[list[str]] = [[] for _ in prompts]
    for start in range(0, len(order), per_batch):
        indices = order[start : start + per_batch]
        length = max(len(encoded[i]) for i in indices)
        input_ids = torch.full((len(indices), length), generator.pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, i in enumerate(indices):
            input_ids[row, length - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[row, length - len(encoded[i]) :] = 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            out = backbone.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=settings.max_new_tokens,
                num_return_sequences=settings.n,
                pad_token_id=generator.pad_id,
                eos_token_id=sorted(generator.eos_ids),
                do_sample=True,
                temperature=settings.temperature,
                top_k=settings.top_k,
                top_p=settings.top_p,
                stop_strings=list(settings.stop) or None,
                tokenizer=tokenizer,
            )
        texts = tokenizer.batch_decode(
            out[:, length:], skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        for row, text in enumerate(texts):
            cut = find_stop(text, settings.stop)
            results[indices[row // settings.n]].append(text if cut is None else text[:cut])
    return results


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


class HeadClock:
    """Seconds spent in `score_at` (the head over the recorded states) while it is installed on the model."""

    def __init__(self, model) -> None:
        self.seconds = 0.0
        self._model, self._score_at = model, model.score_at

        def score_at(*args, **kwargs):
            start = time.perf_counter()
            try:
                return self._score_at(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        model.score_at = score_at

    def close(self) -> None:
        del self._model.score_at  # the instance attribute goes, the method shows again


def compare(
    generator: CriticGenerator, prompts: list[str], settings: GenerationSettings, repeats: int
) -> dict:
    critic = lambda: best_of_n(generator, prompts, settings.n, settings)  # noqa: E731
    plain = lambda: plain_generate(generator, prompts, settings)  # noqa: E731
    critic(), plain()  # warm-up
    times: dict[str, list[float]] = {"critic": [], "plain": []}
    head_share: list[float] = []
    for _ in range(repeats):  # interleaved: a busy neighbour slows both sides alike
        clock = HeadClock(generator.model)
        try:
            seconds, reranked = timed(critic)
        finally:
            clock.close()
        times["critic"].append(seconds)
        head_share.append(clock.seconds / seconds)
        seconds, texts = timed(plain)
        times["plain"].append(seconds)
    same = [
        s.text == t
        for r, row in zip(reranked, texts, strict=True)
        for s, t in zip(r.samples, row, strict=True)
    ]
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "critic_s": median["critic"],
        "plain_s": median["plain"],
        "ratio": median["critic"] / median["plain"],
        "min_ratio": min(times["critic"]) / min(times["plain"]),
        "same_texts": sum(same) / len(same),
        "head_share": statistics.median(head_share),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", default=None, help="export dir (default: the newest under --outputs)")
    parser.add_argument("--outputs", default="outputs")
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128, help="generated rows per forward")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    export = find_export(OmegaConf.create({"ckpt": args.ckpt, "paths": {"outputs": args.outputs}}))
    generator = CriticGenerator.from_export(export, batch_size=args.batch_size)
    offline = GenerateSettings()
    settings = GenerationSettings(
        max_new_tokens=offline.max_new_tokens,
        do_sample=True,
        temperature=offline.temperature,
        top_k=0,
        top_p=1.0,
        n=args.n,
        seed=0,
        stop=tuple(offline.stop),
    )
    prompts = rerank_prompts(args.problems)
    print(
        f"export {export}\n{args.problems} prompts x {args.n} samples, T={settings.temperature}, "
        f"max_new_tokens={settings.max_new_tokens}, batch {args.batch_size} rows, {torch.get_num_threads()} threads"
    )
    for name, run_settings in (("stop at newline", settings), ("no stop string", replace(settings, stop=()))):
        r = compare(generator, prompts, run_settings, args.repeats)
        print(
            f"{name:>16}: best-of-{args.n} with critic {r['critic_s']:.2f} s, generation alone {r['plain_s']:.2f} s, "
            f"ratio {r['ratio']:.3f}x (min/min {r['min_ratio']:.3f}x), same texts {r['same_texts']:.1%}; "
            f"the head {r['head_share']:.1%} of the critic side"
        )


if __name__ == "__main__":
    main()
