"""CriticTreeSearch: critic-guided search over reasoning steps as a LangChain Runnable.

    PromptTemplate.from_template("Question: {q}\\n") | CriticTreeSearch(model="runs/steps/export") | StrOutputParser()

The input is a prompt (a string or a PromptValue); the output is the chosen path's text (steps joined by the
separator), or with `return_result=True` the whole `SearchResult` (the tree, every candidate, the tokens sampled).
The search itself is `autocritic.inference.search.search`; `search()` here runs it on one prompt without
LangChain. The model is an export of a step critic (`data.schema=stepwise`): `model=` (directory or hub id, loaded
on first use and shared) or `generator=` (a `CriticGenerator`), or any `StepExpander` as `expander=`.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, PrivateAttr

from autocritic.errors import ConfigError
from autocritic.inference.loading import check_model, shared_generator
from autocritic.inference.search import SearchResult, SearchSettings, search, search_many
from autocritic.inference.stepper import CriticStepper

_SETTING_NAMES = [f.name for f in fields(SearchSettings)]


class CriticTreeSearch(RunnableSerializable[Any, Any]):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str | None = None
    generator: Any = Field(default=None, exclude=True)  # a CriticGenerator
    expander: Any = Field(default=None, exclude=True)  # any StepExpander (tests script one)
    device: str | None = None
    dtype: str = "float32"
    return_result: bool = False

    strategy: str = "beam"
    value: str = "critic"
    aggregate: str = "min"
    expand: int = 4
    beam: int = 2
    max_depth: int = 8
    max_step_tokens: int = 24
    token_budget: int | None = None
    temperature: float = 0.8
    greedy_first: bool = True
    threshold: float = 0.5
    separator: str = "\n"
    final_prefix: str = "Answer:"
    seed: int | None = 0
    rollouts: bool = False
    branch_depth: int = 1
    resample: int = 0
    widen: int = 0

    _expander: Any = PrivateAttr(default=None)

    def model_post_init(self, context: Any) -> None:
        self.settings()  # bad settings fail when built, not at the first call
        if self.model is None and self.generator is None and self.expander is None:
            raise ConfigError(
                "CriticTreeSearch needs model= (an export of a step critic), generator= or expander=."
            )
        if self.model is not None:
            check_model(self.model)

    def settings(self, **overrides) -> SearchSettings:
        values = {name: getattr(self, name) for name in _SETTING_NAMES} | overrides
        try:
            return SearchSettings(**values)
        except ValueError as error:
            raise ConfigError(f"CriticTreeSearch: {error}") from None

    def step_expander(self):
        if self.expander is not None:
            return self.expander
        if self._expander is None:
            generator = self.generator or shared_generator(self.model, self.device, self.dtype)
            self._expander = CriticStepper(generator)
        return self._expander

    def search(self, prompt: str, **overrides) -> SearchResult:
        """The search on one prompt; `overrides` replace settings for this call (e.g. `token_budget=200`)."""
        return search(self.step_expander(), prompt, self.settings(**overrides))

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(lambda prompt: self._run(prompt, **kwargs), _as_prompt(input), config)

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """The searches of every input, beam searches in lockstep (`search_many`): the same results as one
        `invoke` each, in fuller batches."""
        prompts = [_as_prompt(value) for value in inputs]
        settings = self.settings(**kwargs)

        def run(given: list[str]) -> list[Any]:
            return [self._output(result) for result in search_many(self.step_expander(), given, settings)]

        return self._batch_with_config(run, prompts, config, return_exceptions=return_exceptions)

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """`batch` in an executor: the searches in lockstep, not one thread per input waiting for the model."""
        first = config[0] if isinstance(config, list) and config else config
        return await run_in_executor(
            first, self.batch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    def _run(self, prompt: str, **overrides) -> Any:
        return self._output(self.search(prompt, **overrides))

    def _output(self, result: SearchResult) -> Any:
        return result if self.return_result else result.response(self.separator)


def _as_prompt(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, PromptValue):
        return value.to_string()
    raise ConfigError(
        f"CriticTreeSearch takes a prompt string or a PromptValue, got {type(value).__name__}: put a PromptTemplate "
        "before it to build one from a dict."
    )
