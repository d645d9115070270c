"""CriticLLM: the critic's backbone as a LangChain text LLM, with the critic score in `generation_info`.

    PromptTemplate | CriticLLM | StrOutputParser()        LLMChain(llm=CriticLLM(...), prompt=...)

Each generation carries `{"critic_score": float, "finish_reason": "stop" | "eos" | "length"}` (plus
`"token_values"` with `return_values=True`, `"token_logprobs"` with `return_logprobs=True`), computed from the
generation's own forward passes. `stop` is honoured (the stop string and everything after it are cut) and only
the new text is returned, which is what `HuggingFacePipeline` gets wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import BaseModel, ConfigDict, Field

from autocritic.inference.generation import CriticGenerator, GenerationSettings, Sample, TextGenerator

_SETTING_NAMES = {f.name for f in fields(GenerationSettings)}


class GenerationFields(BaseModel):
    """Generation settings as LangChain model fields; call-time kwargs (`llm.invoke(p, temperature=0.7)`)
    override them. `stop` here is added to the stop strings of each call."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    generator: Any = Field(exclude=True)  # a TextGenerator: CriticGenerator, or a scripted one in tests
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = 0
    stop: list[str] | None = None
    return_values: bool = False
    return_logprobs: bool = False

    def generation_settings(self, stop: list[str] | None = None, **overrides: Any) -> GenerationSettings:
        unknown = set(overrides) - _SETTING_NAMES
        if unknown:
            raise TypeError(f"unknown generation arguments {sorted(unknown)}: use {sorted(_SETTING_NAMES)}")
        values = {name: getattr(self, name) for name in _SETTING_NAMES if name != "stop"} | overrides
        stops = [*(self.stop or []), *(stop or []), *overrides.get("stop", ())]
        values["stop"] = tuple(dict.fromkeys(s for s in stops if s))  # deduplicated, in order
        return GenerationSettings(**values)

    @property
    def settings_params(self) -> dict[str, Any]:
        params = {name: getattr(self, name) for name in _SETTING_NAMES}
        config = getattr(getattr(getattr(self.generator, "model", None), "backbone", None), "config", None)
        params["model"] = getattr(config, "_name_or_path", None) or type(self.generator).__name__
        return params


def generation_info(sample: Sample) -> dict[str, Any]:
    info: dict[str, Any] = {"critic_score": sample.score, "finish_reason": sample.finish_reason}
    if sample.values is not None:
        info["token_values"] = sample.values
    if sample.logprobs is not None:
        info["token_logprobs"] = sample.logprobs
    return info


class CriticLLM(GenerationFields, BaseLLM):
    """A LangChain LLM over a `CriticGenerator` (batched prompts, `n` samples each, streaming)."""

    @classmethod
    def from_export(cls, path: str | Path, batch_size: int = 16, **fields: Any) -> CriticLLM:
        """Load an export (`load_critic`) and wrap it; `fields` are generation settings such as max_new_tokens."""
        return cls(generator=CriticGenerator.from_export(path, batch_size=batch_size), **fields)

    @property
    def _llm_type(self) -> str:
        return "autocritic"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self.settings_params

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        generator: TextGenerator = self.generator
        samples = generator.generate(prompts, self.generation_settings(stop, **kwargs))
        return LLMResult(
            generations=[
                [Generation(text=s.text, generation_info=generation_info(s)) for s in row] for row in samples
            ]
        )

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        """Token by token; the last chunk has no text and carries the critic score."""
        generator: TextGenerator = self.generator
        for item in generator.stream(prompt, self.generation_settings(stop, **kwargs)):
            if isinstance(item, Sample):
                chunk = GenerationChunk(text="", generation_info=generation_info(item))
            else:
                chunk = GenerationChunk(text=item)
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
