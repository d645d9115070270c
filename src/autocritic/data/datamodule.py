"""CriticDataModule: local json/jsonl/csv/parquet files or a hub dataset id → validated, tokenized batches.

Batches are right-padded to the longest sequence in the batch (the model pools by attention mask, so the
padding side does not matter). Pairwise batches stack chosen rows first, then rejected rows: (2B, T).
With `share_prompts`, rows with the same prompt come in the same batch and the batch holds each distinct prompt
once, then the answers (`collate_shared`; the model runs a prompt once, see `CriticModel.forward_shared`).
After `use_features`, batches carry precomputed final states instead of tokens (the frozen phase's cache).
Conversational rows are rendered to (prompt text, response text) first (`chat_format.render_exchange`), then
encoded like text rows. Stepwise rows are split into train and val as they are written (the steps of one solution
stay in one split), then expanded to one pointwise row per step (`data/stepwise.py`).
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import PreTrainedTokenizerBase

from autocritic.chat_format import Conversation, render_exchange
from autocritic.data.replay import ReplayCycle, collate_replay, encode_documents, read_replay_files
from autocritic.data.schemas import ANSWER_FIELDS, check_rows, check_schema, scan_json_lines, scan_text
from autocritic.data.sharding import BatchShard
from autocritic.data.stepwise import DEFAULT_SEPARATOR, expand_steps
from autocritic.data.template import Template
from autocritic.errors import ConfigError, DataError

BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
MIN_ROWS_PER_PROMPT = 1.5  # data.share_prompts: below this many sequences per distinct prompt, batches stay plain
SPLITS = ("train", "val", "test")
CHAT_TEMPLATES = ("auto", "none")
PLAIN_TEMPLATE = "{prompt}{response}"


@dataclass
class DataSettings:
    schema: str = "pointwise"
    # The training split's schema when it differs: "pairwise" trains a ranking objective on (chosen, rejected) pairs
    # while the validation and test splits stay pointwise (labels to rank the epochs by and to calibrate on).
    train_schema: str | None = None
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    test_files: list[str] = field(default_factory=list)
    hub_id: str | None = None
    hub_splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "val": "validation", "test": "test"})
    columns: dict[str, str] = field(default_factory=dict)
    template: str = PLAIN_TEMPLATE
    # Conversational rows: "auto" renders them with the tokenizer's chat template (the Human:/AI: dialogue layout
    # when it has none), "none" always with the dialogue layout.
    chat_template: str = "auto"
    max_length: int = 256
    batch_size: int = 32
    eval_batch_size: int = 64
    val_fraction: float = 0.1
    num_workers: int = 0
    group_by_length: bool = True  # training batches of similar lengths (less padding); see EpochShuffle
    replay_files: list[str] = field(default_factory=list)  # LM-only documents (data/replay.py), finetune only
    replay_batch_size: int = 4  # replay documents per training step
    # Rows that share a prompt (self-generated data: K answers per prompt) share a batch, and the prompt runs once.
    share_prompts: bool = True
    # Stepwise rows: the text that ends each step (TRL's default); the critic is read at it.
    step_separator: str = DEFAULT_SEPARATOR
    seed: int = 0

    def __post_init__(self):
        if self.train_schema not in (None, self.schema) and (self.train_schema, self.schema) != ("pairwise", "pointwise"):
            raise ConfigError(
                f"data.train_schema={self.train_schema!r} with data.schema={self.schema!r} is not supported: "
                "pairwise training rows go with pointwise validation and test rows (data.schema=pointwise); "
                "otherwise leave data.train_schema unset (null)."
            )
        if not self.step_separator:
            raise ConfigError("data.step_separator is empty: steps need a separator, e.g. a newline (the default).")
        if self.chat_template not in CHAT_TEMPLATES:
            raise ConfigError(
                f"data.chat_template={self.chat_template!r} is not valid: expected one of {list(CHAT_TEMPLATES)} "
                "(auto: the tokenizer's chat template; none: the Human:/AI: dialogue layout)."
            )

    def schema_of(self, split: str) -> str:
        return (self.train_schema or self.schema) if split == "train" else self.schema


class ListDataset(Dataset):
    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


class EpochShuffle(Sampler[int]):
    """A permutation drawn from (seed, epoch) alone, so a run resumed at an epoch boundary sees the same order as
    an uninterrupted one (`shuffle=True` draws from the global RNG, which a checkpoint does not restore).
    Lightning calls `set_epoch` before each epoch.

    With `lengths`, examples of similar length are batched together, as Hugging Face's `group_by_length`: the
    permutation is cut into megabatches of `megabatch` batches, each sorted by length, longest first. Padding
    (self-generated data: ~11% of the tokens of a shuffled batch) mostly disappears; the order is still random.
    The megabatch holding the longest example goes first: the peak memory (an out-of-memory error, or the heap
    the allocator keeps) comes at step one instead of growing through the epoch.

    With `groups` (lists of example indices), the permutation moves whole groups: the examples of a group stay
    next to each other (rows that share a prompt, see `prompt_groups`)."""

    def __init__(
        self,
        size: int,
        seed: int,
        lengths: list[int] | None = None,
        batch_size: int = 1,
        megabatch: int = 50,
        groups: list[list[int]] | None = None,
    ):
        self.size, self.seed, self.epoch = size, seed, 0
        self.lengths, self.span = lengths, batch_size * megabatch
        self.groups = groups if groups is not None else [[i] for i in range(size)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        units = [self.groups[i] for i in torch.randperm(len(self.groups), generator=generator).tolist()]
        if self.lengths is not None:
            longest_of = [max(self.lengths[i] for i in unit) for unit in units]
            megabatches, current, rows = [], [], 0
            for index, unit in enumerate(units):
                current.append(index)
                rows += len(unit)
                if rows >= self.span:
                    megabatches.append(current)
                    current, rows = [], 0
            if current:
                megabatches.append(current)
            megabatches = [sorted(m, key=lambda u: -longest_of[u]) for m in megabatches]
            first = max(range(len(megabatches)), key=lambda m: longest_of[megabatches[m][0]])
            megabatches.insert(0, megabatches.pop(first))
            units = [units[u] for m in megabatches for u in m]
        return iter([i for unit in units for i in unit])


def prompt_prefix(ids: list[int], prompt_len: int) -> tuple[int, ...]:
    """The tokens a row shares with the other answers to its prompt. At least the last token stays with the answer
    (it is where the score is read), so a row that is all prompt shares all but that token."""
    return tuple(ids[: max(0, min(prompt_len, len(ids) - 1))])


def prompt_groups(items: list[dict]) -> list[list[int]]:
    """Indices of the examples grouped by the prompt tokens of their first sequence, in order of appearance."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(prompt_prefix(item["ids"][0], item["prompt_len"][0]), []).append(index)
    return list(groups.values())


def padded(rows: list[list[int]] | list[tuple[int, ...]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of rows padded to the longest, on the left or on the right."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def group_ids(batch: list[dict]) -> torch.Tensor:
    """(B,) the prompt number of each item (-1 where unknown)."""
    return torch.tensor([item.get("group", -1) for item in batch], dtype=torch.long)


def as_list(files) -> list[str]:
    if files is None:
        return []
    return [files] if isinstance(files, str) else [str(f) for f in files]


def read_local_file(path: str) -> list[dict]:
    import datasets

    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"data file {file} does not exist. Check data.train_files / val_files / test_files.")
    builder = BUILDERS.get(file.suffix.lower())
    if builder is None:
        raise DataError(f"{file}: unsupported extension {file.suffix!r}; use one of {sorted(BUILDERS)}.")
    if file.stat().st_size == 0:
        raise DataError(f"{file} is empty.")
    if builder == "json" and file.suffix.lower() == ".jsonl":
        return scan_json_lines(file)
    if builder != "parquet":
        scan_text(file)
    if builder == "csv":
        # Every cell as text: pandas' type inference makes a numeric response an int, and one bad label turns the
        # whole column into strings (the error would then blame row 1). Numbers are parsed by check_row.
        with file.open(newline="", encoding="utf-8-sig") as handle:  # -sig: Excel writes a BOM
            return [dict(row) for row in csv.DictReader(handle)]
    try:
        return datasets.load_dataset(builder, data_files=str(file), split="train").to_list()
    except Exception as error:  # datasets/pyarrow raise many types for a malformed file
        raise DataError(f"{file}: could not be read as {builder}: {error}") from None


def read_hub_split(hub_id: str, split: str) -> list[dict] | None:
    import datasets

    try:
        return datasets.load_dataset(hub_id, split=split).to_list()
    except ValueError:
        return None  # the split does not exist
    except Exception as error:
        raise DataError(
            f"could not load the dataset {hub_id!r} split {split!r}: {error}. Without hub access, download it "
            "elsewhere and point data.train_files to local files."
        ) from None


def read_split(settings: DataSettings, split: str) -> list[dict]:
    files = as_list(getattr(settings, f"{split}_files"))
    if files:
        rows = []
        for file in files:
            schema = settings.schema_of(split)
            try:
                checked = check_rows(read_local_file(file), schema, settings.columns, file, settings.step_separator)
            except DataError as error:
                if schema == settings.schema:
                    raise
                raise DataError(
                    f"{error} (data.train_schema={schema}: the training rows are {schema}; for {settings.schema} "
                    f"rows set data.train_schema=null and an objective of that schema, e.g. objective.kind=bce)"
                ) from None
            rows += check_template_fits(checked, settings)
        return rows
    if settings.hub_id and split in settings.hub_splits:
        raw = read_hub_split(settings.hub_id, settings.hub_splits[split])
        where = f"{settings.hub_id}[{settings.hub_splits[split]}]"
        if raw is None:
            return []
        checked = check_rows(raw, settings.schema_of(split), settings.columns, where, settings.step_separator)
        return check_template_fits(checked, settings)
    return []


def check_template_fits(rows: list[dict], settings: DataSettings) -> list[dict]:
    """A conversation is laid out by its chat template alone; data.template would wrap it a second time (and
    CriticChatModel's prompts, through the export's template, the same way)."""
    conversation = next((r["prompt"] for r in rows if isinstance(r["prompt"], Conversation)), None)
    if conversation is not None and settings.template != PLAIN_TEMPLATE:
        raise ConfigError(
            f"{conversation.where} is a conversation, but data.template={settings.template!r} would wrap its chat "
            f"layout in more text. Set data.template='{PLAIN_TEMPLATE}' to train on conversations."
        )
    return rows


def text_row(row: dict, tokenizer: PreTrainedTokenizerBase | None) -> dict:
    """The row with a conversational prompt and answers rendered to text (`render_exchange`); `tokenizer` None
    renders the dialogue layout. Text rows are returned as they are."""
    prompt = row["prompt"]
    if not isinstance(prompt, Conversation):
        return row
    out = dict(row)
    for answer in ANSWER_FIELDS:
        if answer in row:
            out["prompt"], out[answer] = render_exchange(prompt, row[answer], tokenizer)
    return out


def read_rows(settings: DataSettings) -> dict[str, list[dict]]:
    """Every row of every split, checked against the schema (no tokenizer needed: this runs before any build);
    without a validation split, `val_fraction` of the training rows. Stepwise rows come out expanded to one
    pointwise row per step (`expand_steps`), after the split."""
    check_schema(settings.schema)
    rows = {split: read_split(settings, split) for split in SPLITS}
    if not rows["train"]:
        raise DataError("no training rows: set data.train_files (json/jsonl/csv/parquet) or data.hub_id.")
    if not rows["val"] and settings.schema_of("train") != settings.schema:
        raise DataError(
            f"data.train_schema={settings.train_schema} needs validation rows of the {settings.schema} schema to rank "
            "the epochs and calibrate on: set data.val_files."
        )
    if not rows["val"]:
        shuffled = rows["train"][:]
        random.Random(settings.seed).shuffle(shuffled)
        n_val = max(1, int(len(shuffled) * settings.val_fraction))
        rows["val"], rows["train"] = shuffled[:n_val], shuffled[n_val:]
    if settings.schema == "stepwise":
        rows = {split: expand_steps(split_rows, settings.step_separator) for split, split_rows in rows.items()}
    return rows


class CriticDataModule(L.LightningDataModule):
    def __init__(
        self, settings: DataSettings, tokenizer: PreTrainedTokenizerBase, rows: dict[str, list[dict]] | None = None
    ):
        """`rows`: the checked rows of `read_rows(settings)`, when the caller has read them already."""
        super().__init__()
        self.settings = settings
        self.rows = rows
        self.tokenizer = tokenizer
        self.template = Template(settings.template)
        check_schema(settings.schema)
        self.encoded: dict[str, list[dict]] = {}
        self.features: dict[str, torch.Tensor] = {}
        self.replay: list[tuple[list[int], list[int]]] = []
        self.stats: dict[str, float] = {}

    # ---- reading and validation: everything is checked before any compute ----
    def prepare_rows(self) -> dict[str, list[dict]]:
        if self.rows is None:
            self.rows = read_rows(self.settings)
        return self.rows

    def setup(self, stage: str | None = None) -> None:
        if self.encoded:
            return
        chat_tokenizer = self.tokenizer if self.settings.chat_template == "auto" else None
        for split, rows in self.prepare_rows().items():
            texts = [text_row(r, chat_tokenizer) for r in rows]
            self.encoded[split], lengths = self.encode_rows(texts, split)
            self.check_conversations_fit(rows, lengths)
        if self.settings.replay_files:
            documents = read_replay_files(as_list(self.settings.replay_files))
            self.replay = encode_documents(documents, self.tokenizer, self.settings.max_length)
            self.stats["data/replay_documents"] = len(self.replay)

    def check_conversations_fit(self, rows: list[dict], lengths: list[dict[str, int]]) -> None:
        """A conversation longer than data.max_length is refused (a text row keeps its end): cutting its start
        would drop the system message and the first turns, which is another conversation. `lengths`: each row's
        token count per answer field, before any cut (`encode_rows`)."""
        for row, row_lengths in zip(rows, lengths, strict=True):
            if not isinstance(row["prompt"], Conversation):
                continue
            for answer, length in row_lengths.items():
                if length > self.settings.max_length:
                    raise DataError(
                        f"{row['prompt'].where}: the conversation ({answer}) is {length} tokens, longer than "
                        f"data.max_length={self.settings.max_length}. Raise data.max_length or shorten it."
                    )

    # ---- tokenization ----
    def encode_texts(self, pairs: list[tuple[str, str]]) -> list[tuple[list[int], int, int]]:
        """Token ids of each prompt+response (keeping the end when too long), prompt length, and the length
        before any cut.

        One batched tokenizer call for all texts; each distinct prompt is tokenized once (self-generated data
        repeats every prompt K times)."""
        prompts = [self.template.render_prompt(prompt) for prompt, _ in pairs]
        distinct = list(dict.fromkeys(prompts))
        prompt_lens = dict(zip(distinct, map(len, self.tokenizer(distinct)["input_ids"]), strict=True)) if distinct else {}
        texts = [rendered + response for rendered, (_, response) in zip(prompts, pairs, strict=True)]
        out = []
        for ids, rendered in zip(self.tokenizer(texts)["input_ids"] if texts else [], prompts, strict=True):
            cut = max(0, len(ids) - self.settings.max_length)
            out.append((ids[cut:], max(0, prompt_lens[rendered] - cut), len(ids)))
        return out

    def encode_rows(self, rows: list[dict], split: str) -> tuple[list[dict], list[dict[str, int]]]:
        """Items {"ids", "prompt_len", "target"}, and for pointwise and scalar rows "group": the number of the row's
        prompt in the split, for the metrics over the answers to one prompt (within-problem AUROC); and each row's
        token count per answer field before any cut."""
        items, lengths = [], []
        groups: dict[str, int] = {}
        limit = self.settings.max_length
        if self.settings.schema_of(split) == "pairwise":
            encoded = self.encode_texts([(r["prompt"], r[k]) for r in rows for k in ("chosen", "rejected")])
            for (chosen, chosen_len, full_c), (rejected, rejected_len, full_r) in zip(
                encoded[0::2], encoded[1::2], strict=True
            ):
                items.append({"ids": [chosen, rejected], "prompt_len": [chosen_len, rejected_len], "target": 1.0})
                lengths.append({"chosen": full_c, "rejected": full_r})
        else:
            key = "score" if self.settings.schema == "scalar" else "label"
            encoded = self.encode_texts([(r["prompt"], r["response"]) for r in rows])
            for row, (ids, prompt_len, full) in zip(rows, encoded, strict=True):
                group = groups.setdefault(row["prompt"], len(groups))
                items.append({"ids": [ids], "prompt_len": [prompt_len], "target": row[key], "group": group})
                lengths.append({"response": full})
        self.stats[f"data/{split}_examples"] = len(items)
        if self.settings.schema == "stepwise":  # each example is one step; step 1 starts a solution
            self.stats[f"data/{split}_solutions"] = sum(row["step"] == 1 for row in rows)
            self.stats[f"data/{split}_steps"] = len(items)
        self.stats[f"data/{split}_truncated"] = sum(max(row.values()) > limit for row in lengths)
        return items, lengths

    def collate_tokens(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        # Pairwise: all chosen rows, then all rejected rows.
        n_seq = len(batch[0]["ids"])
        seqs = [(item["ids"][k], item["prompt_len"][k], item["target"]) for k in range(n_seq) for item in batch]
        length = max(len(ids) for ids, _, _ in seqs)
        input_ids = torch.full((len(seqs), length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(seqs), length), dtype=torch.long)
        lm_labels = torch.full((len(seqs), length), -100, dtype=torch.long)
        for row, (ids, prompt_len, target) in enumerate(seqs):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
            good = row < len(batch) and target >= 0.5  # chosen rows, or pointwise rows labelled good
            if good:
                lm_labels[row, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:], dtype=torch.long)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "prompt_lengths": torch.tensor([prompt_len for _, prompt_len, _ in seqs], dtype=torch.long),
            "lm_labels": lm_labels,
            "target": torch.tensor([item["target"] for item in batch], dtype=torch.float32),
            "group": group_ids(batch),
        }

    def collate_shared(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        """The batch as distinct prompts (G, P), left-padded, and answers (S*B, A), right-padded, in
        `collate_tokens`' row order; answer r follows prompt `repeat[r]`. `response` marks the response tokens
        of each answer, `answer_labels` the LM targets (response tokens of chosen / good rows), aligned with the
        answer columns. A batch with a row that has no prompt to share falls back to `collate_tokens`."""
        n_seq = len(batch[0]["ids"])
        seqs = [(item["ids"][k], item["prompt_len"][k], item["target"]) for k in range(n_seq) for item in batch]
        prefixes = [prompt_prefix(ids, prompt_len) for ids, prompt_len, _ in seqs]
        if not all(prefixes):
            return self.collate_tokens(batch)
        group_of: dict[tuple[int, ...], int] = {}
        repeat = [group_of.setdefault(prefix, len(group_of)) for prefix in prefixes]
        pad = self.tokenizer.pad_token_id
        prefix_ids, prefix_mask = padded(list(group_of), pad, left=True)
        answer_ids, answer_mask = padded([ids[len(p) :] for (ids, _, _), p in zip(seqs, prefixes, strict=True)], pad, left=False)
        # Leading answer tokens that still belong to the prompt (only when the prompt is the whole row).
        skips = torch.tensor([prompt_len - len(p) for (_, prompt_len, _), p in zip(seqs, prefixes, strict=True)])
        response = answer_mask.bool() & (torch.arange(answer_ids.shape[1]) >= skips[:, None])
        good = torch.tensor([row < len(batch) and target >= 0.5 for row, (_, _, target) in enumerate(seqs)])
        return {
            "prefix_ids": prefix_ids,
            "prefix_mask": prefix_mask,
            "answer_ids": answer_ids,
            "answer_mask": answer_mask,
            "repeat": torch.tensor(repeat, dtype=torch.long),
            "response": response,
            "answer_labels": torch.where(response & good[:, None], answer_ids, -100),
            "target": torch.tensor([item["target"] for item in batch], dtype=torch.float32),
            "group": group_ids(batch),
        }

    @staticmethod
    def collate_features(batch: list[dict]) -> dict[str, torch.Tensor]:
        features = torch.stack([item["features"] for item in batch])  # (B, S, F), S = 1 or 2
        return {
            "features": features.transpose(0, 1).reshape(-1, features.shape[-1]),  # (S*B, F)
            "target": torch.tensor([item["target"] for item in batch], dtype=torch.float32),
            "group": group_ids(batch),
        }

    def use_features(self, features: dict[str, torch.Tensor]) -> None:
        """Serve precomputed features (split -> (N, S, H + 2): final state, confidence) instead of tokens."""
        self.features = features

    # ---- loaders ----
    def shared_prompt_groups(self, split: str) -> list[list[int]] | None:
        """The split's examples grouped by prompt when its token batches share prompts (`collate_shared`), else None:
        data.share_prompts off, cached features, or too few rows sharing a prompt to pay for it."""
        items = self.encoded.get(split)
        if not self.settings.share_prompts or not items or split in self.features:
            return None
        groups = prompt_groups(items)
        if len(items) * len(items[0]["ids"]) < MIN_ROWS_PER_PROMPT * len(groups):
            return None  # running prompts and answers apart costs more than it saves
        return groups

    def loader(self, split: str, shuffle: bool) -> DataLoader:
        s = self.settings
        batch_size = s.batch_size if split == "train" else s.eval_batch_size
        items = self.encoded[split]
        tokens = split not in self.features
        groups = self.shared_prompt_groups(split)
        share = groups is not None
        sampler = None
        if shuffle:
            grouped = s.group_by_length and tokens  # cached features all cost the same
            lengths = [max(map(len, it["ids"])) for it in items] if grouped else None
            sampler = EpochShuffle(len(items), s.seed, lengths, batch_size, groups=groups)
        elif groups is not None:
            sampler = [i for group in groups for i in group]  # evaluation metrics do not depend on the order
        sampler = self.sharded(sampler if sampler is not None else range(len(items)), batch_size, even=shuffle)
        if not tokens:
            items = [
                {"features": f, "target": it["target"], "group": it.get("group", -1)}
                for f, it in zip(self.features[split], self.encoded[split], strict=True)
            ]
            return DataLoader(ListDataset(items), batch_size=batch_size, sampler=sampler, collate_fn=self.collate_features)
        return DataLoader(
            ListDataset(self.encoded[split]),
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=self.collate_shared if share else self.collate_tokens,
            num_workers=s.num_workers,
        )

    def sharded(self, order: Sampler[int] | range | list[int], batch_size: int, even: bool) -> Sampler[int] | None:
        """Under data parallelism, this rank's whole batches of `order` (`BatchShard`); else `order` itself (None for
        the plain sequential order)."""
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            return BatchShard(order, batch_size, trainer.world_size, trainer.global_rank, even)
        return None if isinstance(order, range) else order

    def train_dataloader(self) -> DataLoader | dict[str, DataLoader]:
        critic = self.loader("train", shuffle=True)
        if not self.replay:
            return critic
        size = self.settings.replay_batch_size
        ranks = self.trainer.world_size if self.trainer is not None else 1
        cycle = ReplayCycle(len(self.replay), len(critic) * size * ranks, self.settings.seed)
        replay = DataLoader(
            ListDataset(self.replay),
            batch_size=size,
            sampler=self.sharded(cycle, size, even=True),
            collate_fn=partial(collate_replay, pad_id=self.tokenizer.pad_token_id),
        )
        return {"critic": critic, "replay": replay}  # Lightning zips them: one replay batch per critic batch

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test" if self.encoded.get("test") else "val", shuffle=False)
