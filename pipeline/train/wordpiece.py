"""The tiny text tower's tokenizer: a BERT-style WordPiece vocabulary trained offline on the run's own
reports (:func:`train_wordpiece`), behind the part of transformers' tokenizer interface that
training and evaluation call (:class:`WordPieceTokenizer`).

Plain ``tokenizers``: importing transformers costs seconds at every trainer start, and the tiny
path needs nothing else from it. The folder :meth:`WordPieceTokenizer.save_pretrained` writes is a
transformers one all the same (``AutoTokenizer.from_pretrained`` reads it), and
:meth:`WordPieceTokenizer.from_folder` reads the folders transformers wrote for earlier runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CONFIG = "tokenizer_config.json"


class WordPieceTokenizer:
    """A ``tokenizers.Tokenizer`` with transformers' fast-tokenizer calls: ``tok(texts, padding=,
    truncation=, max_length=, return_tensors=)``, ``len``, ``get_vocab``, ``decode``, the special
    tokens and their ids, ``save_pretrained``. The same ids, masks and files as transformers'
    ``PreTrainedTokenizerFast`` over the same backend (tests/test_train_model.py compares them).
    """

    pad_token, unk_token, cls_token, sep_token, mask_token = SPECIAL_TOKENS

    def __init__(self, backend: Tokenizer, *, model_max_length: int = 512) -> None:
        """Raises ValueError when the vocabulary lacks one of the special tokens."""
        vocab = backend.get_vocab(with_added_tokens=True)
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"the tokenizer has no {', '.join(missing)}: not a tiny text tower's tokenizer")
        self.backend = backend
        self.model_max_length = model_max_length
        ids = [vocab[t] for t in SPECIAL_TOKENS]
        self.pad_token_id, self.unk_token_id, self.cls_token_id, self.sep_token_id, self.mask_token_id = ids

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> WordPieceTokenizer:
        """The tokenizer a ``save_pretrained`` (this class's or transformers') wrote into ``folder``.
        Raises FileNotFoundError when it has no tokenizer.json, ValueError for one without the
        special tokens."""
        folder = Path(folder)
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"{folder} holds no tokenizer.json")
        backend = Tokenizer.from_file(str(file))
        config = json.loads((folder / CONFIG).read_text()) if (folder / CONFIG).is_file() else {}
        return cls(backend, model_max_length=int(config.get("model_max_length", 512)))

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def __call__(
        self,
        texts: str | Sequence[str],
        *,
        padding: bool = False,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
    ) -> dict[str, Any]:
        """``input_ids`` and ``attention_mask`` of each text (``[CLS] text
        [SEP]``): lists, or (B, L) int64 tensors with ``return_tensors="pt"``. ``padding``: to the
        longest text; ``truncation``: at ``max_length`` tokens (default ``model_max_length``),
        specials included. Raises ValueError for tensors of unequal lengths (no padding) or
        another ``return_tensors``."""
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' or None")
        backend = self.backend  # set per call, as transformers does with the same backend
        if truncation:
            backend.enable_truncation(max_length or self.model_max_length)
        else:
            backend.no_truncation()
        if padding:
            backend.enable_padding(pad_id=self.pad_token_id, pad_token=self.pad_token)
        else:
            backend.no_padding()
        single = isinstance(texts, str)
        encodings = backend.encode_batch([texts] if single else list(texts))
        out: dict[str, Any] = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
        }
        if return_tensors == "pt":
            import torch

            if len({len(ids) for ids in out["input_ids"]}) > 1:
                raise ValueError("texts of different lengths make no tensor: give padding=True")
            return {k: torch.tensor(v, dtype=torch.int64) for k, v in out.items()}
        return {k: v[0] for k, v in out.items()} if single else out

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """``tokenizer.json`` and a ``tokenizer_config.json`` that transformers reads as a
        ``PreTrainedTokenizerFast`` with these special tokens."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        clean = Tokenizer.from_str(self.backend.to_str())  # without the last call's padding
        clean.no_truncation()
        clean.no_padding()
        clean.save(str(folder / "tokenizer.json"))
        names = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": self.model_max_length,
            **dict(zip(names, SPECIAL_TOKENS, strict=True)),
        }
        (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def train_wordpiece(texts: list[str], *, vocab_size: int, max_length: int = 512) -> WordPieceTokenizer:
    """A BERT-style WordPiece tokenizer (lowercasing BERT normaliser, BERT pre-tokenizer,
    ``[CLS] text [SEP]``) trained on ``texts``. Offline and deterministic: the same texts give the
    same vocabulary in every process.

    The tokenizers trainer alone is not deterministic (huggingface/tokenizers#1794): it creates
    each ``##c`` continuation symbol in hash-map order of the words, and the symbol ids break ties
    between equally frequent merges. Declaring every ``##c`` up front (as special tokens, in
    sorted order) fixes their ids; the vocabulary is then rebuilt with only the real specials.
    """
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    letters: set[str] = set()
    for text in texts:
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            letters.update(word[1:])
    continuations = [f"##{c}" for c in sorted(letters)]
    seed = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    seed.normalizer, seed.pre_tokenizer = normalizer, pre_tokenizer
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=[*SPECIAL_TOKENS, *continuations], show_progress=False
    )
    seed.train_from_iterator(texts, trainer)
    vocab = seed.get_vocab(with_added_tokens=False)
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return WordPieceTokenizer(tok, model_max_length=max_length)
