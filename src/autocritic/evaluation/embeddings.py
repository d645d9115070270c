"""A cheap, deterministic text embedding computed offline: signed hashed character n-grams (LangChain `Embeddings`).

    "What is 23+45?" ──► n-grams of " what is 23+45? "      (which digits, which operator)
                     ──► n-grams of " what is 00+00? "      (the shape: 2-digit + 2-digit)
                     ──► words                               ("what", "is", "23+45?")
                     ──► each feature hashed (crc32) to one of `dims` slots with a ±1 sign, then L2-normalised

Cosine similarity then rewards problems of the same shape and operator, and shared digits. No model, no
network, the same vector on every machine (crc32, never Python's salted `hash`).
"""

from __future__ import annotations

import re
import zlib

import numpy as np
from langchain_core.embeddings import Embeddings

_DIGIT = re.compile(r"\d")


class HashedNgramEmbeddings(Embeddings):
    def __init__(self, dims: int = 512, ngram_range: tuple[int, int] = (1, 3)):
        if dims < 8 or ngram_range[0] < 1 or ngram_range[1] < ngram_range[0]:
            raise ValueError(f"bad settings: dims={dims}, ngram_range={ngram_range}")
        self.dims = dims
        self.ngram_range = ngram_range

    def features(self, text: str) -> list[str]:
        low = f" {text.lower().strip()} "
        shape = _DIGIT.sub("0", low)
        grams = []
        for n in range(self.ngram_range[0], self.ngram_range[1] + 1):
            grams += [f"c{n}|{low[i : i + n]}" for i in range(len(low) - n + 1)]
            grams += [f"s{n}|{shape[i : i + n]}" for i in range(len(shape) - n + 1)]
        return grams + [f"w|{word}" for word in low.split()]

    def vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dims)
        for feature in self.features(text):
            h = zlib.crc32(feature.encode())
            v[h % self.dims] += 1.0 if (h >> 31) & 1 else -1.0
        norm = np.linalg.norm(v)
        return v / norm if norm > 0 else v

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.vector(t).tolist() for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.vector(text).tolist()
