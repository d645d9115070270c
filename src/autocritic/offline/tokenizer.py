"""A small byte-level BPE tokenizer trained on the generated corpus, saved in Hugging Face form.

Pre-tokenization cuts text into words, single digits and single punctuation marks (operators, brackets),
each with the space before it, GPT-2 style (" name", " 6", "8", "+"). BPE then only merges letters. So the
model sees numbers digit by digit and never a rare run such as `+((`, and a cut after ":" (prompt "Answer:",
response " 68") tokenizes like the whole text. Spaces stay attached to words on purpose: isolating them was
tried and doubled the sequence length and made copying (ReAct inputs, recall) two hops instead of one; the
tiny model then did not learn to copy at all in the time budget.

Its chat template is the dialogue layout the model learns ("Human: ..." / "AI: ..." lines,
`autocritic.chat_format.DIALOGUE_CHAT_TEMPLATE`). A tokenizer saved before it had one renders conversations the
same way: without a template, `chat_format` falls back to that layout.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from autocritic.chat_format import DIALOGUE_CHAT_TEMPLATE

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r" ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]|\s+(?!\S)|\s+"), behavior="isolated"
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """BPE over the byte alphabet (any text encodes, nothing is unknown); eos ends documents, pad is its own id.
    The chat template changes no token: the model trained with it is the model trained without."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = _pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        # The default would rewrite " ." and " ," on decode and break decode(encode(x)) == x.
        clean_up_tokenization_spaces=False,
        chat_template=DIALOGUE_CHAT_TEMPLATE,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> Path:
    """Save so that `AutoTokenizer.from_pretrained(out_dir)` reloads it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
