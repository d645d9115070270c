"""Critic-guided search over reasoning steps (Tree of Thoughts, Yao et al. 2023), with the critic as the value.

    state ──expand: k sampled next steps──► children, each valued at its step's end ──► keep the best b (beam / BFS)
                                                                                   └─► or go deepest first (DFS)

A step is the text up to the step separator ("\\n"); a path ends at a step starting with the final prefix
("Answer:"), at end of text, or when a step runs out of tokens. The value of a state is the step critic's
estimate that the path is still right (`value="critic"`: by default the lowest of its steps' probabilities), or,
as the control, the model's own likelihood of the path: the geometric mean of its tokens' probabilities
(`value="likelihood"`). A step sampled twice is one state (beam keeps distinct states, DFS tries a step once). By
default the first of each state's candidates is the greedy step (`greedy_first`), so a search never lacks the
step greedy decoding would take.

The algorithms see the model only through a `StepExpander` (`inference/stepper.py` runs a critic model; tests
script one), so they are the same for any model and testable on a known tree.

    beam  ToT's breadth-first search: each depth expands every kept state into `expand` children and keeps the
          `beam` best open ones; finished paths are candidates; it stops once `beam` paths have finished (a step
          cut by the token limit is no finish), the frontier is empty, or the token budget is spent. The answer is
          the best-valued candidate.
          With `rollouts`, every new open state is finished greedily (one step at a time from its own cache) and
          valued by its finished path: a state is as good as the answer it leads to, judged by the critic where
          Math-Shepherd asks the checker. Each finished rollout is a candidate; the beam keeps the `beam` states
          with the best rollouts and branches them again, `branch_depth` depths in all. A kept state's greedy
          child is the first step of its rollout, so branching it samples `expand - 1` new siblings only.
          With `resample`, a state whose sampled steps repeat samples again (up to `resample` rounds) until it has
          `expand` distinct ones. With `widen`, a rollout search none of whose finished paths reaches `threshold`
          samples `expand` more first steps and finishes them too (up to `widen` rounds): compute goes to the
          questions the critic doubts.
    dfs   ToT's depth-first search: children in order of value, a child below `threshold` pruned, backtracking
          when every child of a state is pruned; the first finished path at or above the threshold is the answer
          (else the best finished path seen; if none finished, the path that takes the best-valued child at each
          step from the root, finished with the steps already sampled and as few new ones as it needs).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

STRATEGIES = ("beam", "dfs")
VALUES = ("critic", "likelihood")
AGGREGATES = ("min", "product", "last")


@dataclass(frozen=True)
class SearchSettings:
    strategy: str = "beam"  # beam | dfs
    value: str = "critic"  # critic | likelihood
    aggregate: str = "min"  # critic: a path's value from its steps' probabilities (min | product | last)
    expand: int = 4  # next steps sampled per expanded state
    beam: int = 2  # beam: open states kept per depth (and finished paths wanted)
    max_depth: int = 8  # steps
    max_step_tokens: int = 24
    token_budget: int | None = None  # sampled tokens; no expansion starts once spent
    temperature: float = 0.8
    greedy_first: bool = (
        True  # the first of each state's `expand` steps is the greedy one, the others sampled
    )
    threshold: float = 0.5  # dfs: children below are pruned; widen: answers below are doubted
    separator: str = "\n"
    final_prefix: str = "Answer:"
    seed: int | None = 0
    rollouts: bool = False  # beam: each new open state finished greedily and valued by its finished path
    branch_depth: int = 1  # rollouts: the depths at which kept states branch (their rollouts finish the rest)
    resample: int = 0  # beam: rounds that sample a state's repeated steps again, for `expand` distinct ones
    widen: int = 0  # rollouts: rounds of `expand` more first steps while no finished path reaches `threshold`

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"search strategy must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}")
        if self.value not in VALUES:
            raise ValueError(f"search value must be one of {', '.join(VALUES)}; got {self.value!r}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(
                f"search aggregate must be one of {', '.join(AGGREGATES)}; got {self.aggregate!r}"
            )
        if self.rollouts and self.strategy != "beam":
            raise ValueError(f"search rollouts need strategy='beam', got {self.strategy!r}")
        for name in ("resample", "widen"):
            if getattr(self, name) < 0:
                raise ValueError(f"search {name} must be at least 0, got {getattr(self, name)}")
        if self.resample and self.strategy != "beam":
            raise ValueError(f"search resample needs strategy='beam' (DFS tries each step once), got {self.strategy!r}")
        if self.widen and not self.rollouts:
            raise ValueError("search widen needs rollouts=True (it widens the rollout search's first steps)")
        for name in ("expand", "beam", "max_depth", "max_step_tokens", "branch_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"search {name} must be at least 1, got {getattr(self, name)}")
        if self.token_budget is not None and self.token_budget < 1:
            raise ValueError(f"search token_budget must be at least 1 or None, got {self.token_budget}")
        if self.temperature < 0:
            raise ValueError(f"search temperature must be ≥ 0, got {self.temperature}")
        if not self.separator:
            raise ValueError("search separator must not be empty")


@dataclass
class Expansion:
    """One sampled next step, as an expander returns it. `state` is the expander's own (e.g. the path's KV cache)."""

    step: str
    score: float | None  # the critic's logit at the step's end (None: no critic)
    logprob: float  # sum of log p(token) over the step's tokens, under the untempered model
    tokens: int  # tokens sampled for the step
    final: bool  # the path ends here
    finish: str = "step"  # step | answer | eos | length
    state: Any = None
    token_ids: list[int] = field(
        default_factory=list
    )  # the step's sampled tokens (an expander may leave it empty)


class StepExpander(Protocol):
    def root(self, prompt: str, settings: SearchSettings) -> Any:
        """The expander's state for the prompt alone (and its random state reset to `settings.seed`)."""

    def expand(self, states: Sequence[Any], k: int, settings: SearchSettings) -> list[list[Expansion]]:
        """`k` sampled next steps for each state."""


@dataclass
class Node:
    step: str
    depth: int
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    score: float | None = None
    logprob: float = 0.0  # of the whole path
    tokens: int = 0  # of the whole path
    final: bool = False
    finish: str = "step"
    value: float = 1.0
    token_ids: list[int] = field(default_factory=list, repr=False)
    kept: bool = False  # beam: kept at its depth; dfs: visited
    pruned: bool = False  # dfs: below the threshold
    outlook: float | None = None  # rollouts: the value of the path its greedy rollout finished
    state: Any = field(default=None, repr=False)

    def path(self) -> list[Node]:
        """The nodes from the first step to this one (the root, which holds no step, excluded)."""
        node, out = self, []
        while node is not None and node.parent is not None:
            out.append(node)
            node = node.parent
        return out[::-1]

    @property
    def steps(self) -> list[str]:
        """The path's steps from the first one to this node's."""
        return [node.step for node in self.path()]

    @property
    def path_token_ids(self) -> list[int]:
        """The sampled tokens of the whole path (the prompt's excluded)."""
        return [token for node in self.path() for token in node.token_ids]

    @property
    def answered(self) -> bool:
        """The path ended with an answer or end of text (not cut by the token or depth limit)."""
        return self.finish in ("answer", "eos")

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass
class SearchResult:
    prompt: str
    best: Node  # the chosen path's last node (a finished path when there was one)
    root: Node
    candidates: list[Node]  # every finished path, in the order found
    sampled_tokens: int
    expansions: int  # states expanded

    @property
    def steps(self) -> list[str]:
        return self.best.steps

    def response(self, separator: str = "\n") -> str:
        """The chosen path as the model wrote it (steps joined by the separator)."""
        return separator.join(self.steps)

    @property
    def finished(self) -> bool:
        return self.best.final and self.best.answered


def node_value(node: Node, settings: SearchSettings) -> float:
    """The value of the path ending at `node`. The critic reads a window of the path's last tokens, so a step's
    probability says whether that step is right; the path's value combines its steps' (the lowest by default, as
    Math-Shepherd ranks solutions; their product, as Lightman et al.; or the last step's alone)."""
    if settings.value == "likelihood":
        return math.exp(node.logprob / node.tokens) if node.tokens else 1.0
    if node.score is None:
        raise ValueError("value='critic' needs critic scores: this expander returned none")
    probability = 1.0 / (1.0 + math.exp(-node.score))
    before = node.parent.value if node.parent is not None and node.parent.parent is not None else 1.0
    if settings.aggregate == "min":
        return min(before, probability)
    return before * probability if settings.aggregate == "product" else probability


class _Search:
    def __init__(self, expander: StepExpander, prompt: str, settings: SearchSettings):
        self.expander = expander
        self.settings = settings
        self.root = Node(step="", depth=0, state=expander.root(prompt, settings), kept=True)
        self.prompt = prompt
        self.candidates: list[Node] = []
        self.sampled = 0
        self.expansions = 0

    def spent(self) -> bool:
        return self.settings.token_budget is not None and self.sampled >= self.settings.token_budget

    def expand(self, parents: Sequence[Node]) -> list[list[Node]]:
        return self.grow(parents, self.expander.expand([p.state for p in parents], self.settings.expand, self.settings))

    def grow(self, parents: Sequence[Node], per_parent: Sequence[Sequence[Expansion]]) -> list[list[Node]]:
        """The parents' children, from what the expander returned for each parent."""
        self.expansions += len(parents)
        out = []
        for parent, expansions in zip(parents, per_parent, strict=True):
            children = []
            for e in expansions:
                child = Node(
                    step=e.step,
                    depth=parent.depth + 1,
                    parent=parent,
                    score=e.score,
                    logprob=parent.logprob + e.logprob,
                    tokens=parent.tokens + e.tokens,
                    final=e.final or parent.depth + 1 >= self.settings.max_depth,
                    finish=e.finish if e.final or parent.depth + 1 < self.settings.max_depth else "length",
                    state=e.state,
                    token_ids=e.token_ids,
                )
                child.value = node_value(child, self.settings)
                self.sampled += e.tokens
                children.append(child)
            parent.children = parent.children + children  # after a rollout's first step, if it has one
            out.append(children)
        return out

    def result(self, chosen: Node | None) -> SearchResult:
        if chosen is None:
            pool = self._finished() or self.candidates or [n for n in self.root.walk() if n is not self.root]
            chosen = max(pool, key=lambda n: n.value) if pool else self.root
        for node in self.root.walk():
            node.state = None  # caches are not kept past the search
        return SearchResult(self.prompt, chosen, self.root, self.candidates, self.sampled, self.expansions)

    def _finished(self) -> list[Node]:
        return [c for c in self.candidates if c.answered]

    def goes_on(self, frontier: Sequence[Node]) -> bool:
        if not frontier or self.spent():
            return False
        if self.settings.rollouts:
            return frontier[0].depth < self.settings.branch_depth
        return len(self._finished()) < self.settings.beam

    def doubtful(self) -> bool:
        """Budget left and no finished path valued at `threshold` or above."""
        best = max((c.value for c in self._finished()), default=0.0)
        return not self.spent() and best < self.settings.threshold

    def add_candidates(self, nodes: Sequence[Node]) -> None:
        known = {id(c) for c in self.candidates}
        self.candidates += [n for n in nodes if n.final and id(n) not in known]

    def keep_best(self, groups: Sequence[Sequence[Node]]) -> list[Node]:
        """One depth of the beam: finished children become candidates, the best `beam` distinct open ones (by
        their rollouts' values, with rollouts) the next frontier."""
        children = [c for group in groups for c in group]
        self.add_candidates(children)
        rank = (lambda n: -n.outlook) if self.settings.rollouts else (lambda n: -n.value)
        open_children = sorted((c for c in children if not c.final), key=rank)
        frontier, seen = [], set()
        for node in open_children:  # distinct states: a step sampled twice is one state
            path = tuple(node.steps)
            if path not in seen and len(frontier) < self.settings.beam:
                seen.add(path)
                frontier.append(node)
                node.kept = True
        return frontier

    def beam_result(self) -> SearchResult:
        finished = self._finished()
        for node in finished:
            node.kept = True
        return self.result(max(finished, key=lambda n: n.value) if finished else None)

    def dfs(self) -> SearchResult:
        found = self._visit(self.root)
        if found is None and not self._finished():
            found = self._descend()
        return self.result(found)

    def _descend(self) -> Node | None:
        """DFS ended without a finished path (every path was pruned before its answer): from the root, take the
        best-valued child at each step, below the threshold or not, expanding only states not expanded yet, until
        a path finishes, reaches `max_depth` or the budget is spent. So an answer comes back whenever the budget and
        depth allow."""
        node = self.root
        while True:
            if not node.children:
                if self.spent():
                    return None
                self.expand([node])
            if not node.children:
                return None
            known = {id(c) for c in self.candidates}
            self.candidates += [c for c in node.children if c.final and id(c) not in known]
            node = max(node.children, key=lambda n: (n.value, bool(n.children)))
            node.kept = True
            if node.final:
                return node if node.answered else None

    def _visit(self, node: Node) -> Node | None:
        if self.spent():
            return None
        children = sorted(self.expand([node])[0], key=lambda n: -n.value)
        tried = set()
        for child in children:
            if child.step in tried:  # the same step sampled again leads to the same subtree
                continue
            tried.add(child.step)
            if child.final:
                self.candidates.append(child)
            if child.value < self.settings.threshold:
                child.pruned = True
                continue
            child.kept = True
            if child.final:
                if child.answered:
                    return child
                continue
            found = self._visit(child)
            if found is not None:
                return found
            if self.spent():
                return None
        return None


def search(expander: StepExpander, prompt: str, settings: SearchSettings | None = None) -> SearchResult:
    """Search the steps that answer `prompt` (see the module's docstring)."""
    settings = settings or SearchSettings()
    run = _Search(expander, prompt, settings)
    return _beams(expander, [run], settings)[0] if settings.strategy == "beam" else run.dfs()


def search_many(
    expander: StepExpander, prompts: Sequence[str], settings: SearchSettings | None = None, batch: int = 8
) -> list[SearchResult]:
    """`search` of each prompt. Beam searches of `batch` prompts go in lockstep: each depth expands the frontiers
    of all of them in one call, so the expander's batches are fuller. With `settings.seed` set, each search keeps its
    own random stream (an expander's `root` seeds it), so a prompt's result does not depend on the others (with
    `seed=None` they share one stream). DFS runs one prompt at a time (its order of expansion depends on what it
    finds)."""
    settings = settings or SearchSettings()
    if batch < 1:
        raise ValueError(f"search_many batch must be at least 1, got {batch}")
    if settings.strategy != "beam":
        return [search(expander, prompt, settings) for prompt in prompts]
    results: list[SearchResult] = []
    for start in range(0, len(prompts), batch):
        runs = [_Search(expander, prompt, settings) for prompt in prompts[start : start + batch]]
        results += _beams(expander, runs, settings)
    return results


def _beams(expander: StepExpander, runs: Sequence[_Search], settings: SearchSettings) -> list[SearchResult]:
    """Beam searches in lockstep: each depth expands the frontiers of every run still going in one call (and, with
    rollouts, finishes all their new states together, one step a call)."""
    frontiers: list[list[Node]] = [[run.root] for run in runs]
    while going := [i for i, run in enumerate(runs) if run.goes_on(frontiers[i])]:
        parents = [(runs[i], node) for i in going for node in frontiers[i]]
        fresh = [(run, p) for run, p in parents if not p.children]
        rolled = [(run, p) for run, p in parents if p.children]  # rollouts: the first child is the greedy step
        _grow(expander, fresh, settings.expand, settings)
        if settings.expand > 1:
            _grow(expander, rolled, settings.expand - 1, replace(settings, greedy_first=False))
        _resample(expander, parents, settings)
        if settings.rollouts:
            _roll_out(expander, [(run, c) for run, p in parents for c in p.children], settings)
        for i in going:
            frontiers[i] = runs[i].keep_best([p.children for p in frontiers[i]])
    for _ in range(settings.widen):
        _widen(expander, [run for run in runs if run.doubtful()], settings)
    return [run.beam_result() for run in runs]


def _grow(expander: StepExpander, parents: Sequence[tuple[_Search, Node]], k: int, settings: SearchSettings) -> None:
    if not parents:
        return
    per_parent = expander.expand([p.state for _, p in parents], k, settings)
    for (run, parent), expansions in zip(parents, per_parent, strict=True):
        run.grow([parent], [expansions])


def _resample(
    expander: StepExpander,
    parents: Sequence[tuple[_Search, Node]],
    settings: SearchSettings,
    wanted: dict[int, int] | None = None,
) -> None:
    """Up to `settings.resample` rounds in which each parent with fewer distinct children than it wants (`expand`,
    or `wanted[id(parent)]`) samples as many new ones as it lacks, parents lacking the same number in one call. The
    repeats stay in the tree: their tokens were sampled."""
    sampling = replace(settings, greedy_first=False)
    wanted = wanted or {}
    for _ in range(settings.resample):
        lacking: dict[int, list[tuple[_Search, Node]]] = {}
        for run, parent in parents:
            missing = wanted.get(id(parent), settings.expand) - len({c.step for c in parent.children})
            if missing > 0 and not run.spent():
                lacking.setdefault(missing, []).append((run, parent))
        if not lacking:
            return
        for missing, group in lacking.items():
            _grow(expander, group, missing, sampling)


def _widen(expander: StepExpander, runs: Sequence[_Search], settings: SearchSettings) -> None:
    """`expand` more sampled first steps for each run (distinct from its others, with `resample`), finished
    greedily like the first ones: a search whose answers the critic doubts spends more, one that trusts its
    answer stops."""
    if not runs:
        return
    roots = [(run, run.root) for run in runs]
    wanted = {id(root): settings.expand + len({c.step for c in root.children}) for _, root in roots}
    _grow(expander, roots, settings.expand, replace(settings, greedy_first=False))
    _resample(expander, roots, settings, wanted)
    _roll_out(expander, [(run, child) for run, root in roots for child in root.children], settings)


def _roll_out(expander: StepExpander, nodes: Sequence[tuple[_Search, Node]], settings: SearchSettings) -> None:
    """Finish each node without an `outlook` greedily, all together one step a call, until its path finishes, its
    run's budget is spent or the expander has no step. Every node of a rollout gets as `outlook` the value of the
    path it reached (greedy steps from any of them lead there), and a finished rollout is a candidate. A node whose
    path another node already holds takes that node's outlook instead of a rollout of its own."""
    greedy = replace(settings, greedy_first=True)
    leaders: dict[tuple[int, tuple[str, ...]], Node] = {}  # a state sampled twice is rolled out once
    fresh, copies = [], []
    for run, node in nodes:
        key = (id(run), tuple(node.steps))
        if key in leaders:
            copies.append((node, leaders[key]))
            continue
        leaders[key] = node
        if node.outlook is None:
            fresh.append((run, node))
    going = list(fresh)
    while going := [(run, tip) for run, tip in going if not tip.final and not run.spent()]:
        per_tip = expander.expand([tip.state for _, tip in going], 1, greedy)
        going = [
            (run, child)
            for (run, tip), expansions in zip(going, per_tip, strict=True)
            for child in run.grow([tip], [expansions[:1]])[0]
        ]
    for run, node in fresh:
        chain = [node]
        while chain[-1].children:
            chain.append(chain[-1].children[0])
        for step in chain:
            step.outlook = chain[-1].value
        run.add_candidates(chain[-1:])
    for copy, leader in copies:
        copy.outlook = leader.outlook
