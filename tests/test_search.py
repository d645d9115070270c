"""Critic-guided search: the algorithms on a scripted tree (a known tree gives a known answer), and the model-backed
expander's scores equal to a plain critic forward over the same tokens (scores from the generation's own passes,
KV caches shared by the children of a state)."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import pytest
import torch
from test_inference import TOKENS_HEAD, WINDOW_HEAD, tiny_generator

from autocritic.inference.search import Expansion, SearchSettings, search, search_many
from autocritic.inference.stepper import CriticStepper


def logit(p: float) -> float:
    return math.log(p / (1 - p))


class ScriptedTree:
    """Steps from a dict {path tuple: [(step, critic probability, log-prob), ...]}: the k-th expansion of a state
    returns its first k children (a state with fewer children returns them all). The first child is the greedy
    step: without `greedy_first` the expansion starts at the second. "Answer:" steps are final."""

    def __init__(self, tree: dict[tuple[str, ...], list[tuple[str, float, float]]], tokens_per_step: int = 3):
        self.tree = tree
        self.tokens_per_step = tokens_per_step
        self.expanded: list[tuple[str, ...]] = []

    def root(self, prompt, settings):
        return ()

    def expand(self, states, k, settings):
        out = []
        for path in states:
            self.expanded.append(path)
            steps = self.tree.get(path, [])[(0 if settings.greedy_first else 1) :][:k]
            out.append([self.expansion(path, *step, settings) for step in steps])
        return out

    def expansion(self, path, step, p, lp, settings):
        final = step.startswith(settings.final_prefix)
        return Expansion(
            step, logit(p), lp, self.tokens_per_step, final, "answer" if final else "step", path + (step,)
        )


class DrawnTree(ScriptedTree):
    """As ScriptedTree, but sampling draws: each call takes a state's next unsampled steps (after its greedy
    first one), so sampling a state again gives new steps, in the order listed."""

    def __init__(self, tree, tokens_per_step: int = 3):
        super().__init__(tree, tokens_per_step)
        self.drawn: dict[tuple[str, ...], int] = {}

    def expand(self, states, k, settings):
        out = []
        for path in states:
            self.expanded.append(path)
            listed = self.tree.get(path, [])
            greedy = listed[:1] if settings.greedy_first else []
            start = 1 + self.drawn.get(path, 0)
            sampled = listed[start : start + k - len(greedy)]
            self.drawn[path] = self.drawn.get(path, 0) + len(sampled)
            out.append([self.expansion(path, *step, settings) for step in greedy + sampled])
        return out


# The likely first step is wrong (the critic knows); the right path needs the less likely "a2".
TREE = {
    (): [("a1", 0.2, -0.1), ("a2", 0.9, -2.0), ("a3", 0.1, -3.0)],
    ("a1",): [("Answer: 1", 0.3, -0.1)],
    ("a2",): [("b1", 0.95, -1.0), ("b2", 0.4, -0.2)],
    ("a3",): [("Answer: 3", 0.05, -0.1)],
    ("a2", "b1"): [("Answer: 2", 0.97, -0.5)],
    ("a2", "b2"): [("Answer: 9", 0.3, -0.1)],
}


def test_beam_follows_the_critic_to_the_right_answer():
    expander = ScriptedTree(TREE)
    result = search(expander, "q", SearchSettings(expand=3, beam=1))
    assert result.steps == ["a2", "b1", "Answer: 2"]
    assert result.finished and result.best.kept
    assert result.best.value == pytest.approx(0.9)  # the path's lowest step (0.9, 0.95, 0.97)
    assert expander.expanded == [(), ("a2",), ("a2", "b1")]  # only the kept state is expanded at each depth
    assert result.sampled_tokens == 3 * (3 + 2 + 1)


@pytest.mark.parametrize("aggregate, value", [("product", 0.9 * 0.95 * 0.97), ("last", 0.97)])
def test_a_path_value_combines_its_steps(aggregate, value):
    result = search(ScriptedTree(TREE), "q", SearchSettings(expand=3, beam=1, aggregate=aggregate))
    assert result.steps == ["a2", "b1", "Answer: 2"] and result.best.value == pytest.approx(value)


def test_a_step_the_window_cannot_see_keeps_the_path_low():
    """A wrong first step is followed by steps that look right on their own: the path's value stays at its worst
    step (min), where the last step alone would rank the wrong path first."""
    tree = {
        (): [("x=1", 0.1, -0.1), ("x=2", 0.8, -0.5)],
        ("x=1",): [("Answer: 1", 0.99, -0.1)],
        ("x=2",): [("Answer: 2", 0.9, -0.1)],
    }
    assert search(ScriptedTree(tree), "q", SearchSettings(expand=2, beam=2)).steps == ["x=2", "Answer: 2"]
    assert search(ScriptedTree(tree), "q", SearchSettings(expand=2, beam=2, aggregate="last")).steps == [
        "x=1",
        "Answer: 1",
    ]


def test_the_beam_keeps_distinct_states():
    tree = {
        (): [("a", 0.9, -0.1), ("a", 0.9, -0.1), ("b", 0.6, -0.1)],
        ("b",): [("Answer: b", 0.8, -0.1)],
        ("a",): [("Answer: a", 0.3, -0.1)],
    }
    result = search(ScriptedTree(tree), "q", SearchSettings(expand=3, beam=2))
    assert sorted(n.step for n in result.root.children if n.kept) == ["a", "b"]
    assert result.steps == ["b", "Answer: b"]


def test_beam_with_the_likelihood_takes_the_likely_wrong_path():
    result = search(ScriptedTree(TREE), "q", SearchSettings(expand=3, beam=1, value="likelihood"))
    assert result.steps == ["a1", "Answer: 1"]
    assert result.best.value == pytest.approx(math.exp((-0.1 - 0.1) / 6))


def test_a_wider_beam_keeps_both_states_and_picks_the_best_finished_path():
    result = search(ScriptedTree(TREE), "q", SearchSettings(expand=3, beam=2))
    assert result.response() == "a2\nb1\nAnswer: 2"
    kept_first = [n.step for n in result.root.children if n.kept]
    assert sorted(kept_first) == ["a1", "a2"]
    assert {c.step for c in result.candidates} >= {"Answer: 1", "Answer: 2"}


def test_dfs_prunes_below_the_threshold_and_backtracks():
    tree = dict(TREE)
    tree[("a2", "b1")] = [("Answer: 2", 0.3, -0.5)]  # the first deep path is judged wrong at its end
    tree[("a2", "b2")] = [("Answer: 7", 0.8, -0.1)]
    tree[("a2",)] = [("b1", 0.95, -1.0), ("b2", 0.6, -0.2)]
    expander = ScriptedTree(tree)
    result = search(expander, "q", SearchSettings(strategy="dfs", expand=3, threshold=0.5))
    assert result.steps == ["a2", "b2", "Answer: 7"]
    assert expander.expanded == [(), ("a2",), ("a2", "b1"), ("a2", "b2")]  # b1's answer pruned: backtracked
    assert {n.step for n in result.root.walk() if n.pruned} == {"Answer: 2"}
    assert not any(n.kept for n in result.root.children if n.step != "a2")  # never needed


def test_dfs_with_every_child_pruned_returns_the_best_path_seen():
    tree = {(): [("a", 0.2, -1.0), ("Answer: 5", 0.4, -1.0)]}
    expander = ScriptedTree(tree)
    result = search(expander, "q", SearchSettings(strategy="dfs", expand=2))
    assert result.steps == ["Answer: 5"] and result.best.pruned
    assert expander.expanded == [()]  # "a" was pruned, never expanded


def test_dfs_that_prunes_every_path_before_its_answer_finishes_the_best_valued_one():
    tree = {
        (): [("a", 0.2, -1.0), ("b", 0.3, -1.0)],
        ("b",): [("c", 0.1, -1.0), ("Answer: 4", 0.35, -1.0)],
    }
    expander = ScriptedTree(tree)
    result = search(expander, "q", SearchSettings(strategy="dfs", expand=2))
    assert result.steps == ["b", "Answer: 4"] and result.finished
    assert result.best.value == pytest.approx(0.3)  # still valued as a path below the threshold
    assert expander.expanded == [(), ("b",)]
    assert [c.step for c in result.candidates] == ["Answer: 4"]


def test_dfs_finishing_a_pruned_search_reuses_the_states_it_expanded():
    tree = {
        (): [("a", 0.6, -1.0), ("b", 0.4, -1.0)],
        ("a",): [("x", 0.2, -1.0), ("y", 0.3, -1.0)],  # DFS visits "a", then prunes both of its children
        ("a", "y"): [("Answer: 8", 0.9, -1.0)],
    }
    expander = ScriptedTree(tree)
    result = search(expander, "q", SearchSettings(strategy="dfs", expand=2))
    assert result.steps == ["a", "y", "Answer: 8"] and result.finished
    assert expander.expanded == [(), ("a",), ("a", "y")]  # "a" is not expanded twice
    assert result.sampled_tokens == 3 * (2 + 2 + 1)


def test_dfs_without_budget_left_to_finish_returns_the_best_path_seen():
    tree = {(): [("a", 0.2, -1.0), ("b", 0.3, -1.0)], ("b",): [("Answer: 4", 0.35, -1.0)]}
    expander = ScriptedTree(tree)
    result = search(expander, "q", SearchSettings(strategy="dfs", expand=2, token_budget=6))
    assert expander.expanded == [()] and not result.finished
    assert result.steps == ["b"]


# The greedy path from the first step the critic likes ends low; its second child ends high.
ROLLOUT_TREE = {
    (): [("a1", 0.9, -0.1), ("a2", 0.5, -1.0)],
    ("a1",): [("b1", 0.6, -0.1), ("b2", 0.95, -2.0)],
    ("a1", "b1"): [("Answer: 1", 0.2, -0.1)],
    ("a1", "b2"): [("Answer: 7", 0.9, -0.1)],
    ("a2",): [("c1", 0.5, -0.1)],
    ("a2", "c1"): [("Answer: 3", 0.4, -0.1)],
}


def test_rollouts_value_a_state_by_the_answer_its_greedy_path_reaches():
    expander = ScriptedTree(ROLLOUT_TREE)
    result = search(expander, "q", SearchSettings(expand=2, beam=1, rollouts=True))
    assert result.steps == ["a2", "c1", "Answer: 3"]
    assert sorted(c.steps[-1] for c in result.candidates) == ["Answer: 1", "Answer: 3"]
    assert [c.outlook for c in result.root.children] == pytest.approx([0.2, 0.4])
    assert result.sampled_tokens == 3 * 6  # two first steps, each finished in two greedy steps
    assert expander.expanded == [(), ("a1",), ("a2",), ("a1", "b1"), ("a2", "c1")]


def test_rollouts_branch_the_kept_states_again_without_sampling_their_greedy_step_twice():
    expander = ScriptedTree(ROLLOUT_TREE)
    result = search(expander, "q", SearchSettings(expand=2, beam=2, rollouts=True, branch_depth=2))
    assert result.steps == ["a1", "b2", "Answer: 7"]
    a1 = result.root.children[0]
    assert [c.step for c in a1.children] == ["b1", "b2"]  # b1 from a1's rollout, b2 the one new sibling
    assert result.sampled_tokens == 3 * (6 + 1 + 1)  # depth 1 as above; then b2 and its answer (a2 has no sibling)


def test_a_state_sampled_twice_is_rolled_out_once():
    tree = {(): [ROLLOUT_TREE[()][0], *ROLLOUT_TREE[()]]} | {k: v for k, v in ROLLOUT_TREE.items() if k}
    expander = ScriptedTree(tree)
    result = search(expander, "q", SearchSettings(expand=3, beam=1, rollouts=True))
    assert expander.expanded == [(), ("a1",), ("a2",), ("a1", "b1"), ("a2", "c1")]
    assert [c.outlook for c in result.root.children] == pytest.approx([0.2, 0.2, 0.4])
    assert result.sampled_tokens == 3 * 7


# The greedy first step a1 is sampled again before a2; a3 is the answer the critic trusts.
DRAWN_TREE = {
    (): [("a1", 0.3, -0.1), ("a1", 0.3, -0.1), ("a2", 0.45, -0.5), ("a2", 0.45, -0.5), ("a3", 0.9, -2.0)],
    ("a1",): [("Answer: 1", 0.3, -0.1)],
    ("a2",): [("Answer: 2", 0.45, -0.1)],
    ("a3",): [("Answer: 3", 0.9, -0.1)],
}


def test_resampling_gives_a_state_distinct_steps_and_counts_the_repeats():
    plain = search(DrawnTree(DRAWN_TREE), "q", SearchSettings(expand=2, beam=1, rollouts=True))
    assert [c.step for c in plain.root.children] == ["a1", "a1"] and plain.steps == ["a1", "Answer: 1"]
    expander = DrawnTree(DRAWN_TREE)
    result = search(expander, "q", SearchSettings(expand=2, beam=1, rollouts=True, resample=1))
    assert [c.step for c in result.root.children] == ["a1", "a1", "a2"]
    assert result.steps == ["a2", "Answer: 2"]
    assert result.sampled_tokens == 3 * (3 + 2)  # three first steps (one a repeat), two rollouts of one step
    assert expander.expanded == [(), (), ("a1",), ("a2",)]


def test_resampling_widens_the_beam_without_rollouts():
    settings = SearchSettings(expand=2, beam=2)
    plain = search(DrawnTree(DRAWN_TREE), "q", settings)
    assert sorted(c.steps[-1] for c in plain.candidates) == ["Answer: 1"]
    result = search(DrawnTree(DRAWN_TREE), "q", dataclasses.replace(settings, resample=1))
    assert sorted(c.steps[-1] for c in result.candidates) == ["Answer: 1", "Answer: 2"]
    assert result.steps == ["a2", "Answer: 2"]


def test_widening_samples_more_first_steps_only_while_the_critic_doubts_the_answers():
    settings = SearchSettings(expand=2, beam=1, rollouts=True, resample=1, widen=1, threshold=0.5)
    expander = DrawnTree(DRAWN_TREE)
    result = search(expander, "q", settings)
    # round one: a1, a1 again, a2 (best answer 0.45 < 0.5); widening: a2 again, a3, both new to this call
    assert [c.step for c in result.root.children] == ["a1", "a1", "a2", "a2", "a3"]
    assert result.steps == ["a3", "Answer: 3"] and result.best.value == pytest.approx(0.9)
    assert result.sampled_tokens == 3 * (5 + 3)  # the repeated a2 is not rolled out again
    trusted = search(DrawnTree(DRAWN_TREE), "q", dataclasses.replace(settings, threshold=0.4))
    assert [c.step for c in trusted.root.children] == ["a1", "a1", "a2"]  # 0.45 is trusted: no widening
    more = search(DrawnTree(DRAWN_TREE), "q", dataclasses.replace(settings, widen=3))
    assert more.sampled_tokens == result.sampled_tokens  # a3 is trusted: the other rounds never start


def test_the_runnable_widens_a_doubted_rollout_search():
    from autocritic.inference.search_chain import CriticTreeSearch

    runnable = CriticTreeSearch(expander=DrawnTree(DRAWN_TREE), rollouts=True, expand=2, beam=1, resample=1, widen=1)
    assert runnable.invoke("q") == "a3\nAnswer: 3"


def test_widening_stops_at_the_token_budget():
    settings = SearchSettings(expand=2, beam=1, rollouts=True, resample=1, widen=1, token_budget=15)
    result = search(DrawnTree(DRAWN_TREE), "q", settings)
    assert result.sampled_tokens == 15 and [c.step for c in result.root.children] == ["a1", "a1", "a2"]


def test_rollouts_stop_at_the_token_budget():
    settings = SearchSettings(expand=2, beam=1, rollouts=True, token_budget=12)
    cut = search(ScriptedTree(ROLLOUT_TREE), "q", settings)
    assert cut.sampled_tokens == 12  # the first steps, then one greedy step of both rollouts: spent
    assert cut.candidates == [] and not cut.finished
    result = search(ScriptedTree(ROLLOUT_TREE), "q", dataclasses.replace(settings, token_budget=13))
    assert result.sampled_tokens == 18 and result.steps == ["a2", "c1", "Answer: 3"]  # the last call overshoots


@pytest.mark.parametrize("batch", [1, 3])
def test_rollouts_in_lockstep_give_each_prompt_its_own_search(batch):
    settings = SearchSettings(expand=2, beam=2, rollouts=True, branch_depth=2)
    alone = search(ScriptedTree(ROLLOUT_TREE), "q", settings)
    together = search_many(ScriptedTree(ROLLOUT_TREE), ["q", "q", "q"], settings, batch=batch)
    assert [r.steps for r in together] == [alone.steps] * 3
    assert [r.sampled_tokens for r in together] == [alone.sampled_tokens] * 3


def test_the_token_budget_stops_the_search():
    expander = ScriptedTree(TREE, tokens_per_step=5)
    result = search(expander, "q", SearchSettings(expand=3, beam=1, token_budget=15))
    assert expander.expanded == [()]  # 3 children x 5 tokens spend it
    assert result.sampled_tokens == 15 and not result.finished
    assert result.steps == ["a2"]  # the best state reached


def test_max_depth_ends_a_path_unfinished():
    tree = {(): [("a", 0.9, -1.0)], ("a",): [("b", 0.9, -1.0)], ("a", "b"): [("c", 0.9, -1.0)]}
    result = search(ScriptedTree(tree), "q", SearchSettings(expand=1, beam=1, max_depth=2))
    assert result.steps == ["a", "b"] and result.best.finish == "length" and not result.finished


class PromptTrees(ScriptedTree):
    """One scripted tree per prompt: a state is (prompt, *steps); records the states of each call."""

    def __init__(self, trees: dict[str, dict], tokens_per_step: int = 3):
        merged = {(prompt, *path): children for prompt, tree in trees.items() for path, children in tree.items()}
        super().__init__(merged, tokens_per_step)
        self.calls: list[int] = []

    def root(self, prompt, settings):
        return (prompt,)

    def expand(self, states, k, settings):
        self.calls.append(len(states))
        return super().expand(states, k, settings)


TREES = {
    "deep": TREE,
    "shallow": {(): [("Answer: 7", 0.8, -0.1), ("x", 0.5, -0.2)], ("x",): [("Answer: 8", 0.6, -0.1)]},
    "empty": {},
}


def signature(result):
    return (
        result.steps, result.best.value, result.sampled_tokens, result.expansions,
        [(n.step, n.kept, n.depth) for n in result.root.walk()],
    )


@pytest.mark.parametrize(
    "settings",
    [SearchSettings(expand=3, beam=2), SearchSettings(expand=3, beam=1, token_budget=20), SearchSettings(expand=2, beam=2, max_depth=2)],
    ids=["beam", "budget", "depth"],
)
def test_searches_in_lockstep_give_each_prompt_its_own_search(settings):
    prompts = ["deep", "shallow", "empty", "deep"]
    alone = [signature(search(PromptTrees(TREES), prompt, settings)) for prompt in prompts]
    together = PromptTrees(TREES)
    results = search_many(together, prompts, settings, batch=3)
    assert [signature(r) for r in results] == alone
    assert [r.prompt for r in results] == prompts
    assert together.calls[0] == 3  # the first three roots in one call, the fourth prompt in a batch of its own


def test_dfs_and_a_bad_batch_in_search_many():
    settings = SearchSettings(strategy="dfs", expand=3, threshold=0.5)
    results = search_many(PromptTrees(TREES), ["deep", "shallow"], settings)
    assert [signature(r) for r in results] == [signature(search(PromptTrees(TREES), p, settings)) for p in ("deep", "shallow")]
    with pytest.raises(ValueError, match="batch"):
        search_many(PromptTrees(TREES), ["deep"], SearchSettings(), batch=0)


@pytest.mark.parametrize(
    "bad",
    [
        {"strategy": "mcts"},
        {"value": "vibes"},
        {"aggregate": "mean"},
        {"expand": 0},
        {"token_budget": 0},
        {"separator": ""},
        {"branch_depth": 0},
        {"rollouts": True, "strategy": "dfs"},
        {"resample": -1},
        {"widen": -1},
        {"widen": 1},
        {"resample": 1, "strategy": "dfs"},
    ],
)
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SearchSettings(**bad)


# ---- the model-backed expander ----------------------------------------------------------------------------

# The tiny random model often writes "/": steps of a few tokens, some cut by the limit, some ended by eos.
SETTINGS = SearchSettings(
    expand=3,
    beam=2,
    max_depth=3,
    max_step_tokens=10,
    temperature=1.0,
    separator="/",
    seed=5,
    greedy_first=False,
)


@pytest.mark.parametrize(
    "head", [None, WINDOW_HEAD, TOKENS_HEAD], ids=["last_state", "window", "window_tokens"]
)
def test_every_step_score_equals_a_forward_over_the_path(tiny_backbone, head):
    generator = tiny_generator(tiny_backbone, head=head, confidence=head is None)
    prompt = "Q: 12+3-4=? A:"
    result = search(CriticStepper(generator), prompt, SETTINGS)
    prompt_ids = generator.tokenizer(prompt)["input_ids"]
    nodes = [n for n in result.root.walk() if n.parent is not None]
    assert len(nodes) >= SETTINGS.expand * 2  # at least two depths were expanded
    assert any(n.depth >= 2 for n in nodes)
    assert any(n.finish == "eos" for n in nodes) and any(n.finish == "step" for n in nodes)
    # eos is not part of a response the critic reads: a path ended by it is scored at the token before
    paths = [prompt_ids + n.path_token_ids[: -1 if n.finish == "eos" else None] for n in nodes]
    expected = generator.score_ids(paths, prompt_lengths=[len(prompt_ids)] * len(paths))
    assert [n.score for n in nodes] == pytest.approx(expected, abs=1e-4)
    assert result.sampled_tokens == sum(len(n.token_ids) for n in nodes)


def test_a_step_sampled_twice_from_one_state_is_scored_once(tiny_backbone):
    generator = tiny_generator(tiny_backbone, head=TOKENS_HEAD)
    score_at, rows = generator.model.score_at, []

    def counted(hidden, *args, **kwargs):
        rows.append(hidden.shape[0])
        return score_at(hidden, *args, **kwargs)

    generator.model.score_at = counted
    greedy = dataclasses.replace(SETTINGS, temperature=0.0)  # every candidate of a state is the same step
    result = search(CriticStepper(generator), "Q: 12+3-4=? A:", greedy)
    nodes = [n for n in result.root.walk() if n.parent is not None]
    assert len(nodes) == greedy.expand * result.expansions
    assert sum(rows) == result.expansions  # one row per expanded state, not `expand`
    for parent in result.root.walk():
        assert len({(c.step, c.score) for c in parent.children}) <= 1


def test_searches_in_lockstep_sample_as_they_would_alone(tiny_backbone):
    """Each search draws from its own random stream: one prompt's steps do not depend on the prompts beside it."""
    stepper = CriticStepper(tiny_generator(tiny_backbone, head=TOKENS_HEAD))
    prompts = ["Q: 12+3-4=? A:", "Q: 1+2=? A:", "Q: 7*8=? A:"]
    alone = [search(stepper, prompt, SETTINGS) for prompt in prompts]
    together = search_many(stepper, prompts, SETTINGS, batch=3)
    for one, other in zip(alone, together, strict=True):
        assert [n.token_ids for n in one.root.walk()] == [n.token_ids for n in other.root.walk()]
        assert [n.score for n in one.root.walk()] == pytest.approx([n.score for n in other.root.walk()], abs=1e-4)


def test_a_search_whose_rows_have_ended_draws_nothing():
    from autocritic.inference.stepper import _sample_streams

    done, going = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    before_done, before_going = done.get_state(), going.get_state()
    logits = torch.zeros(4, 5)
    alive = torch.tensor([False, False, True, False])
    tokens = _sample_streams(logits, 1.0, [(0, 2, done), (2, 4, going)], alive)
    assert tokens.shape == (4,)
    assert torch.equal(done.get_state(), before_done)  # as if it ran alone: its loop would have stopped
    assert not torch.equal(going.get_state(), before_going)


def test_steps_end_at_the_separator_and_values_are_untempered_likelihoods(tiny_backbone):
    generator = tiny_generator(tiny_backbone)
    result = search(
        CriticStepper(generator), "Q: 1+2=? A:", dataclasses.replace(SETTINGS, value="likelihood")
    )
    prompt_ids = generator.tokenizer("Q: 1+2=? A:")["input_ids"]
    for node in (n for n in result.root.walk() if n.parent is not None):
        text = generator.tokenizer.decode(node.token_ids, skip_special_tokens=True)
        assert node.step == text.split("/")[0]
        assert (node.finish == "step") == text.endswith("/")
        ids = torch.tensor([prompt_ids + node.path_token_ids])
        with torch.no_grad():
            logits = generator.model.backbone(ids).logits[0, len(prompt_ids) - 1 : -1].log_softmax(-1)
        path_logprob = logits.gather(-1, ids[0, len(prompt_ids) :, None]).sum()
        assert node.logprob == pytest.approx(float(path_logprob), abs=1e-3)


def test_the_same_seed_gives_the_same_tree(tiny_backbone):
    stepper = CriticStepper(tiny_generator(tiny_backbone))
    first = search(stepper, "Q: 1+2=? A:", SETTINGS)
    second = search(stepper, "Q: 1+2=? A:", SETTINGS)
    assert [n.token_ids for n in first.root.walk()] == [n.token_ids for n in second.root.walk()]


# ---- LangChain --------------------------------------------------------------------------------------------


def test_the_runnable_searches_after_a_prompt_template():
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import PromptTemplate

    from autocritic.inference.search_chain import CriticTreeSearch

    expander = ScriptedTree(TREE)
    chain = PromptTemplate.from_template("Question: {q}\n") | CriticTreeSearch(
        expander=expander, expand=3, beam=1
    )
    assert (chain | StrOutputParser()).invoke({"q": "what?"}) == "a2\nb1\nAnswer: 2"
    full = CriticTreeSearch(
        expander=expander, expand=3, beam=1, value="likelihood", return_result=True
    ).invoke("q")
    assert full.steps == ["a1", "Answer: 1"] and full.sampled_tokens == 3 * 4
    assert CriticTreeSearch(expander=expander, expand=3).batch(["q", "q"]) == ["a2\nb1\nAnswer: 2"] * 2
    rollouts = CriticTreeSearch(expander=ScriptedTree(ROLLOUT_TREE), rollouts=True, expand=2, beam=1)
    assert rollouts.invoke("q") == "a2\nc1\nAnswer: 3"
    trees = PromptTrees(TREES)
    runnable = CriticTreeSearch(expander=trees, expand=3, beam=2)
    assert runnable.batch(["deep", "shallow"]) == [runnable.invoke("deep"), runnable.invoke("shallow")]
    assert trees.calls[0] == 2  # the batch expanded both roots in one call
    trees.calls.clear()
    assert asyncio.run(runnable.abatch(["deep", "shallow"])) == runnable.batch(["deep", "shallow"])
    assert trees.calls[0] == 2  # abatch runs the same lockstep batch


def test_the_runnable_refuses_bad_settings_and_inputs_clearly():
    from autocritic.errors import ConfigError
    from autocritic.inference.search_chain import CriticTreeSearch

    with pytest.raises(ConfigError, match="strategy"):
        CriticTreeSearch(expander=ScriptedTree(TREE), strategy="astar")
    with pytest.raises(ConfigError, match="widen needs rollouts=True"):
        CriticTreeSearch(expander=ScriptedTree(TREE), widen=1)
    with pytest.raises(ConfigError, match="model="):
        CriticTreeSearch()
    with pytest.raises(ConfigError, match="PromptTemplate"):
        CriticTreeSearch(expander=ScriptedTree(TREE)).invoke({"q": 1})


def test_the_runnable_runs_an_export(tiny_export):
    from autocritic.inference.search_chain import CriticTreeSearch

    search_chain = CriticTreeSearch(model=str(tiny_export), expand=2, beam=1, max_depth=2, max_step_tokens=4)
    result = search_chain.search("Q: 1+2=? A:")
    assert result.sampled_tokens > 0 and all(n.score is not None for n in result.root.walk() if n.parent)
    assert isinstance(search_chain.invoke("Q: 1+2=? A:"), str)


# ---- the evaluation suite -----------------------------------------------------------------------------------


def test_the_search_suite_runs_on_a_tiny_export_and_draws_its_trees(tiny_export, tmp_path, caplog):
    import json

    from test_evaluation import compose_eval

    from autocritic.evaluation.run import evaluate

    run_dir = tmp_path / "run"
    sizes = [
        "search.n_problems=6",
        "search.n_samples=2",
        "search.ns=[1,2]",
        "search.subsets=2",
        "search.max_new_tokens=10",
        "search.shapes=[2x1,2x2]",
        "search.rollout_shapes=[2x1x1,2x2x2]",
        "search.headline_shape=2x2x2",
        "search.dfs_expand=2",
        "search.max_depth=2",
        "search.max_step_tokens=5",
        "search.trees=1",
    ]
    with caplog.at_level("WARNING", logger="autocritic"):
        evaluate(compose_eval([f"ckpt={tiny_export}", f"paths.run_dir={run_dir}", "suites=[search]", *sizes]))
    assert "trained on whole answers, not steps" in caplog.text  # the tiny export's critic is pointwise
    figures = json.loads((run_dir / "results.json").read_text())["suites"]["search"]["figures"]
    methods = figures["methods"]
    assert set(methods) == {
        "greedy",
        "majority",
        "best_of_n",
        "step_best_of_n",
        "likelihood",
        "pass_at_n",
        "search_critic",
        "search_likelihood",
        "search_rollout",
        "dfs",
    }
    assert set(methods["search_critic"]) == {"2x1", "2x2"} and set(methods["best_of_n"]) == {"N=1", "N=2"}
    assert set(methods["search_rollout"]) == {"2x1x1", "2x2x2"} and set(figures["comparisons"]) == {
        "2x1",
        "2x2",
        "2x1x1",
        "2x2x2",
    }
    assert figures["comparisons"]["2x2x2"]["all"]["points_over_likelihood_search"] is None
    everything = methods["search_rollout"]["2x2x2"]["all"]
    assert everything["problems"] == 6 and everything["tokens"] > 0
    assert sum(figures["problems_by_operations"].values()) == 6
    assert figures["step_critic"]["steps"] > 0
    assert figures["outcome_scorer"] == "step critic"
    report = (run_dir / "report.md").read_text()
    assert "Search tree for" in report and "points over best-of-N" in report
    for png in ("search.png", "search_tree_1.png"):
        assert (run_dir / png).stat().st_size > 1000 and f"]({png})" in report


@pytest.mark.parametrize(
    ("shares", "family"),
    [({"chain": 0.0}, None), ({}, None), ({"chain": 0.85}, "chain"), ({"chain": 0.1, "countdown": 0.75}, "countdown")],
)
def test_the_step_family_comes_from_the_backbone_and_none_is_refused_before_loading(
    tiny_backbone, tmp_path, shares, family
):
    import json
    import shutil

    from autocritic.errors import ConfigError
    from autocritic.evaluation.search import step_family
    from autocritic.model.backbone import load_backbone, load_tokenizer
    from autocritic.model.critic import CriticModel
    from autocritic.model.export import save_critic
    from autocritic.model.head import HeadSettings

    backbone = tmp_path / "backbone"
    shutil.copytree(tiny_backbone, backbone)
    (backbone / "build_info.json").write_text(json.dumps({"settings": {"mix": {"arithmetic": 1.0} | shares}}))
    model = CriticModel(load_backbone(str(backbone)), head_settings=HeadSettings())
    export = save_critic(
        model, load_tokenizer(str(backbone)), tmp_path / "export", str(backbone), HeadSettings(), "{prompt}{response}",
        "frozen",
    )
    if family is not None:
        assert step_family(export) == family
        return
    with pytest.raises(ConfigError, match="pretrained without a step family.*experiment=steps"):
        step_family(export)


def test_a_backbone_without_build_info_is_searched_on_chains(tiny_export):
    from autocritic.evaluation.search import step_family

    assert step_family(tiny_export) == "chain"  # your model: not known to lack the family, so the suite runs


def test_best_of_n_is_compared_at_the_search_tokens():
    from autocritic.evaluation.search import at_tokens

    curve = [(10.0, 0.2), (40.0, 0.4)]
    assert at_tokens(curve, 20.0) == (pytest.approx(0.3), False)  # halfway in log tokens
    assert at_tokens(curve, 80.0) == (0.4, True) and at_tokens(curve, 10.0) == (0.2, False)


def test_bad_search_suite_settings_are_refused_before_loading():
    from autocritic.evaluation.search import Settings

    with pytest.raises(ValueError, match="expand>x<beam"):
        Settings(shapes=("4by2",), headline_shape="4by2")
    with pytest.raises(ValueError, match="headline_shape"):
        Settings(shapes=("2x1",))
    with pytest.raises(ValueError, match="expand>x<beam>x<branch depths"):
        Settings(rollout_shapes=("8x1",))
    with pytest.raises(ValueError, match="at least 1"):
        Settings(rollout_shapes=("8x0x1",))
    with pytest.raises(ValueError, match="'arithmetic' is not a step family.*countdown"):
        Settings(family="arithmetic")
    with pytest.raises(ValueError, match="rollout_threshold=1.5 must be a probability"):
        Settings(rollout_threshold=1.5)
    with pytest.raises(ValueError, match="rollout_aggregate='mean': use one of"):
        Settings(rollout_aggregate="mean")


@pytest.mark.parametrize(
    "override, message",
    [
        ("search.rollout_widen=-1", "search.rollout_widen=-1: it must be an integer ≥ 0"),
        ("search.rollout_resample=-1", "search.rollout_resample=-1: it must be an integer ≥ 0"),
        ("search.rollout_aggregate=mean", "rollout_aggregate='mean': use one of"),
    ],
)
def test_bad_rollout_settings_fail_before_loading(tmp_path, override, message):
    from test_evaluation import compose_eval

    from autocritic.errors import ConfigError
    from autocritic.evaluation.run import evaluate

    with pytest.raises(ConfigError, match=message):
        evaluate(compose_eval([f"ckpt={tmp_path / 'not-loaded'}", "suites=[search]", override]))


def test_rollouts_without_resampling_or_widening_are_allowed(tmp_path):
    from test_evaluation import compose_eval

    from autocritic.errors import CheckpointError
    from autocritic.evaluation.run import evaluate

    overrides = ["suites=[search]", "search.rollout_widen=0", "search.rollout_resample=0"]
    with pytest.raises(CheckpointError):  # past the settings, at the missing export
        evaluate(compose_eval([f"ckpt={tmp_path / 'not-loaded'}", *overrides]))


def test_greedy_first_makes_one_candidate_per_state_the_greedy_step(tiny_backbone):
    generator = tiny_generator(tiny_backbone)
    settings = dataclasses.replace(SETTINGS, greedy_first=True, temperature=5.0)
    result = search(CriticStepper(generator), "Q: 1+2=? A:", settings)
    prompt_ids = generator.tokenizer("Q: 1+2=? A:")["input_ids"]
    for parent in (n for n in result.root.walk() if n.children):
        first = parent.children[0]
        ids = prompt_ids + parent.path_token_ids
        for token in first.token_ids:  # each token of the first child is the argmax after the path so far
            with torch.no_grad():
                logits = generator.model.backbone(torch.tensor([ids])).logits[0, -1]
            assert token == int(logits.argmax())
            ids.append(token)
