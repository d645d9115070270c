"""CriticLLM: the critic's backbone as a LangChain text LLM, with the critic score in `generation_info`.

    PromptTemplate | CriticLLM(model="runs/export") | StrOutputParser()        LLMChain(llm=CriticLLM(...), ...)

Each generation carries `{"critic_score": float, "finish_reason": "stop" | "eos" | "length"}` (plus
`"token_values"` with `return_values=True`, `"token_logprobs"` with `return_logprobs=True`), computed from the
generation's own forward passes. `stop` is honoured (the stop string and everything after it are cut) and only
the new text is returned, which is what `HuggingFacePipeline` gets wrong.

`GenerationFields` holds what both adapters share: LangChain's standard parameters (`model`, `temperature`,
`max_tokens`, `stop`, `n`, `streaming`, `timeout`, `max_retries`), the critic's own ones, and where the generator
comes from: `model=` (an export directory or hub id, loaded at first use and shared, `autocritic.inference.loading`)
or `generator=` (any `TextGenerator`: tests script one).
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.messages import UsageMetadata
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from autocritic.errors import ConfigError
from autocritic.inference.background import iterate_in_thread
from autocritic.inference.generation import GenerationSettings, Sample, TextGenerator
from autocritic.inference.loading import check_model, shared_generator

_SETTING_NAMES = {f.name for f in fields(GenerationSettings)}
_CALL_ALIASES = {"max_tokens": "max_new_tokens", "timeout": "max_time"}  # LangChain's name at call time -> ours


def sampling_of(temperature: float | None, do_sample: bool | None) -> tuple[bool, float]:
    """(sample?, temperature) under LangChain's convention: temperature 0 or unset is greedy, temperature > 0
    samples at that temperature. `do_sample` decides when set: False is greedy whatever the temperature, True
    without a temperature samples at 1."""
    if temperature is not None and temperature < 0:
        raise ConfigError(f"temperature={temperature} is not valid: expected 0 (greedy) or more (sampling).")
    if not temperature:
        if do_sample and temperature == 0:
            raise ConfigError(
                "temperature=0 with do_sample=True is not valid: temperature 0 means greedy decoding. Set "
                "temperature > 0 to sample, or leave do_sample unset."
            )
        return bool(do_sample), 1.0
    sample = True if do_sample is None else do_sample
    return sample, float(temperature) if sample else 1.0  # greedy ignores it: one greedy setting, not many


class GenerationFields(BaseModel):
    """Generation settings as LangChain model fields; call-time kwargs (`llm.invoke(p, temperature=0.7)`)
    override them. `stop` here is added to the stop strings of each call.

    Sampling: `temperature=0` (or unset) is greedy and `temperature>0` samples at that temperature, as LangChain
    users expect; `do_sample` (unset by default) overrides the rule: False forces greedy decoding, True samples
    (at temperature 1 when none is given). `max_tokens` is also accepted as `max_new_tokens`, `model` as
    `model_name`. `timeout` (seconds) bounds a call's generation: rows still going then stop, with
    finish_reason "length"; `max_retries` is accepted for LangChain's standard signature (a local generation is
    not retried).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    model: str | None = Field(default=None, validation_alias=AliasChoices("model", "model_name"))
    generator: Any = Field(default=None, exclude=True)  # a TextGenerator: CriticGenerator, or a scripted one
    device: str | None = None  # for model=: None is cuda when available, else cpu
    dtype: str = "float32"
    batch_size: int = 16
    max_tokens: int = Field(default=256, validation_alias=AliasChoices("max_tokens", "max_new_tokens"))
    temperature: float | None = None
    do_sample: bool | None = None
    top_k: int = 0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = 0
    stop: list[str] | None = None
    streaming: bool = False
    timeout: float | None = None
    max_retries: int = 0
    return_values: bool = False
    return_logprobs: bool = False

    _loaded: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_source_and_sampling(self) -> GenerationFields:
        if self.generator is None and self.model is None:
            raise ConfigError(
                "give model= (an export directory or a hub id holding one) or generator= (a TextGenerator)."
            )
        if self.generator is None:
            check_model(self.model)
        sampling_of(self.temperature, self.do_sample)
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"timeout={self.timeout}: give the seconds a call may generate for (> 0), or None.")
        self.generation_settings()  # n, max_tokens, top_k, top_p out of range: refused here, not at the first call
        return self

    @property
    def max_new_tokens(self) -> int:
        return self.max_tokens

    def active_generator(self, model: str | None = None) -> TextGenerator:
        """The generator of this call: `model` (a call-time override) or this adapter's own, loaded at first use."""
        if model is not None and model != self.model:
            return self._load(model)
        if self.generator is not None:
            return self.generator
        if self._loaded is None:
            self._loaded = self._load(self.model)
        return self._loaded

    def _load(self, name: str) -> TextGenerator:
        generator = shared_generator(name, self.device, self.dtype)
        if generator.batch_size != self.batch_size:  # same weights, another batch size
            generator = copy.copy(generator)
            generator.batch_size = self.batch_size
        return generator

    def label(self, model: str | None = None) -> str:
        """The model's name for LangChain (response_metadata, tracing): the `model` given, else what the generator
        says of its backbone, else the generator's type."""
        if model or self.model:
            return model or self.model
        config = getattr(getattr(getattr(self.generator, "model", None), "backbone", None), "config", None)
        return getattr(config, "_name_or_path", None) or type(self.generator).__name__

    def generation_settings(self, stop: list[str] | None = None, **overrides: Any) -> GenerationSettings:
        overrides = {_CALL_ALIASES.get(name, name): value for name, value in overrides.items()}
        unknown = set(overrides) - _SETTING_NAMES
        if unknown:
            raise TypeError(
                f"unknown generation arguments {sorted(unknown)}: use {sorted(_SETTING_NAMES | set(_CALL_ALIASES))}"
            )
        values = {
            "max_new_tokens": self.max_tokens,
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "n": self.n,
            "seed": self.seed,
            "return_values": self.return_values,
            "return_logprobs": self.return_logprobs,
            "max_time": self.timeout,
        } | overrides
        values["do_sample"], values["temperature"] = sampling_of(values["temperature"], values["do_sample"])
        stops = [*(self.stop or []), *(stop or []), *overrides.get("stop", ())]
        values["stop"] = tuple(dict.fromkeys(s for s in stops if s))  # deduplicated, in order
        try:
            return GenerationSettings(**values)
        except ValueError as error:
            raise ConfigError(f"{error}.".replace("max_new_tokens=", "max_tokens=")) from None

    @property
    def settings_params(self) -> dict[str, Any]:
        names = ("max_tokens", "temperature", "do_sample", "top_k", "top_p", "n", "seed", "stop")
        return {"model": self.label(), **{name: getattr(self, name) for name in names}} | {
            "return_values": self.return_values,
            "return_logprobs": self.return_logprobs,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any):
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "autocritic"
        params["ls_model_name"] = self.label(kwargs.get("model"))
        params["ls_max_tokens"] = kwargs.get("max_tokens", kwargs.get("max_new_tokens", self.max_tokens))
        return params


def generation_info(sample: Sample) -> dict[str, Any]:
    info: dict[str, Any] = {"critic_score": sample.score, "finish_reason": sample.finish_reason}
    if sample.values is not None:
        info["token_values"] = sample.values
    if sample.logprobs is not None:
        info["token_logprobs"] = sample.logprobs
    return info


def prompt_tokens(generator: TextGenerator, prompt: str) -> int | None:
    """The prompt's length in tokens, when the generator can tell (a scripted one cannot)."""
    count = getattr(generator, "prompt_tokens", None)
    return count(prompt) if callable(count) else None


def usage_of(input_tokens: int | None, sample: Sample) -> UsageMetadata | None:
    if input_tokens is None:
        return None
    output_tokens = len(sample.token_ids)
    return UsageMetadata(
        input_tokens=input_tokens, output_tokens=output_tokens, total_tokens=input_tokens + output_tokens
    )


class CriticLLM(GenerationFields, BaseLLM):
    """A LangChain LLM over a critic export: batched prompts, `n` samples each, token streaming (sync and async).

    Args:
        model: an export directory (`<run dir>/export`) or a hub id holding one; loaded at first use, shared.
        generator: instead of `model`, any `TextGenerator` (a `CriticGenerator`, or a scripted one in tests).
        temperature, do_sample, max_tokens, stop, n, seed, top_k, top_p: see `GenerationFields`.

    Example:
        llm = CriticLLM(model="outputs/finetune/run/export", max_tokens=12, stop=["\\n"])
        result = llm.generate(["Question: What is 2+3?\\nAnswer:"])
        result.generations[0][0].generation_info["critic_score"]
    """

    @classmethod
    def from_export(cls, path: str | Path, batch_size: int = 16, **fields: Any) -> CriticLLM:
        """The same as `CriticLLM(model=path, ...)`: the export loads at first use."""
        return cls(model=str(path), batch_size=batch_size, **fields)

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
        model = kwargs.pop("model", None)
        generator = self.active_generator(model)
        settings = self.generation_settings(stop, **kwargs)
        if self.streaming and len(prompts) == 1 and settings.n == 1:
            pieces, sample = [], None
            for chunk, last in self._chunks(generator, prompts[0], settings, run_manager):
                pieces.append(chunk.text)
                sample = last or sample
            samples = [[sample]]
            generations = [[Generation(text="".join(pieces), generation_info=generation_info(sample))]]
        else:
            samples = generator.generate(prompts, settings)
            generations = [
                [Generation(text=s.text, generation_info=generation_info(s)) for s in row] for row in samples
            ]
        llm_output: dict[str, Any] = {"model_name": self.label(model)}
        counts = [prompt_tokens(generator, p) for p in prompts]
        if None not in counts:
            completion = sum(len(s.token_ids) for row in samples for s in row)
            llm_output["token_usage"] = {
                "prompt_tokens": sum(counts),
                "completion_tokens": completion,
                "total_tokens": sum(counts) + completion,
            }
        return LLMResult(generations=generations, llm_output=llm_output)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        """Token by token; the last chunk has no text and carries the critic score."""
        generator = self.active_generator(kwargs.pop("model", None))
        settings = self.generation_settings(stop, **kwargs)
        for chunk, _ in self._chunks(generator, prompt, settings, run_manager):
            yield chunk

    def _chunks(
        self,
        generator: TextGenerator,
        prompt: str,
        settings: GenerationSettings,
        run_manager: CallbackManagerForLLMRun | None,
    ) -> Iterator[tuple[GenerationChunk, Sample | None]]:
        for item in generator.stream(prompt, settings):
            if isinstance(item, Sample):
                chunk, sample = GenerationChunk(text="", generation_info=generation_info(item)), item
            else:
                chunk, sample = GenerationChunk(text=item), None
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk, sample

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        """`_stream` in a worker thread: the event loop runs on while the model computes each token."""
        async for chunk in iterate_in_thread(lambda: self._stream(prompt, stop, None, **kwargs)):
            if run_manager is not None:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
