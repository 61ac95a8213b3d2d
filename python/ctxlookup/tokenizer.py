"""Byte-level BPE tokenizers (GPT-2, GPT-NeoX / Pythia) in C, identical to Hugging Face.

>>> tok = Tokenizer.load("/path/to/gpt2")            # vocab.json + merges.txt, or tokenizer.json
>>> ids = tok.encode("Hello world<|endoftext|>")      # np.ndarray[int32]
>>> tok.decode(ids)
'Hello world<|endoftext|>'
>>> tok.to_str_tokens(ids)
['Hello', ' world', '<|endoftext|>']

The ids, the decoded text and the offsets are those of Hugging Face ``tokenizers`` with the same
files (tested on 20,000 documents and a table of hard strings):

* ``tokenizer.json`` behaves as ``tokenizers.Tokenizer.from_file(path)``: added tokens with
  ``normalized: false`` (the special ones) are matched in the raw text first, the rest is
  normalized (GPT-NeoX: NFC, with Unicode 9.0 data as HF), added tokens with
  ``normalized: true`` (NeoX's runs of 2-24 spaces) are matched next, then the GPT-2 regex
  (Unicode 16.0 classes, as HF's Oniguruma) and BPE.
* ``vocab.json`` + ``merges.txt`` behaves as HF's GPT-2 tokenizer (``BPE.from_file`` with the
  ByteLevel pre-tokenizer and decoder, ``<|endoftext|>`` a special added token).

Special tokens inside the text are matched by default, as HF does; ``allow_special=False`` treats
them as plain text (HF's ``encode_special_tokens=True``). Text is UTF-8 internally; see
:meth:`Tokenizer.encode` for invalid UTF-8.
"""
from __future__ import annotations

import os
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core

__all__ = ["Tokenizer", "FormatError"]

FormatError = _core.FormatError

TextLike = Union[str, bytes]


def _as_text(text, errors: str):
    """str stays; bytes are passed through as UTF-8 (checked in C) or decoded with `errors`."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text)
        if errors == "strict":
            return text
        return text.decode("utf-8", errors)
    if isinstance(text, str):
        return text
    raise TypeError(f"text must be str or bytes, not {type(text).__name__}")


class Tokenizer:
    """A byte-level BPE tokenizer; create it with :meth:`Tokenizer.load`.

    Attributes:
        bos_token_id, eos_token_id, pad_token_id, unk_token_id: ids from
            ``tokenizer_config.json`` / ``special_tokens_map.json`` / ``config.json`` when they
            are in the tokenizer's folder (in that order of precedence), else from the tokenizer
            itself: ``<|endoftext|>`` for BOS and EOS, ``<|padding|>`` (else EOS) for pad. None when
            the tokenizer has no such token. GPT-2: 50256 for all three; Pythia: 0, 0, 1.
        vocab_size: the largest id + 1, added tokens included (GPT-2 50257, GPT-NeoX 50277).
        path: the file(s) the tokenizer was read from.
        trim_offsets: what :meth:`encode_with_offsets` does by default (the post-processor of
            the tokenizer file: True for GPT-NeoX's tokenizer.json, False for GPT-2's
            vocab.json + merges.txt, as the Hugging Face hub's gpt2 tokenizer).
    """

    def __init__(self, core: "_core.Tokenizer"):
        self._core = core
        info = core.info()
        self.vocab_size: int = info["vocab_size"]
        self.bos_token_id: Optional[int] = info["bos_token_id"]
        self.eos_token_id: Optional[int] = info["eos_token_id"]
        self.pad_token_id: Optional[int] = info["pad_token_id"]
        self.unk_token_id: Optional[int] = info["unk_token_id"]
        self.trim_offsets: bool = bool(info["trim_offsets"])
        self.normalizer: Optional[str] = "NFC" if info["nfc"] else None
        self.path: str = info["source"]

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"]) -> "Tokenizer":
        """Load a tokenizer from a folder or a file.

        ``path`` is a folder holding ``tokenizer.json`` (preferred) or ``vocab.json`` and
        ``merges.txt``; or one of those files. ``tokenizer_config.json``,
        ``special_tokens_map.json`` and ``config.json`` next to it set the BOS / EOS / pad ids.

        Supported: model ``BPE`` with the ``ByteLevel`` pre-tokenizer (no prefix space, GPT-2
        regex) and decoder, normalizer NFC or none, post-processor ByteLevel or none, added tokens
        without ``lstrip`` / ``rstrip`` / ``single_word``. Anything else raises
        :class:`FormatError` (a ``ValueError``) naming the file and the field; malformed files
        (bad JSON, a merge of tokens not in the vocabulary, two tokens with one id, a bad
        ``merges.txt`` line) raise it naming the file and the line or field. A missing file
        raises ``OSError``. ``truncation`` and ``padding`` in tokenizer.json are ignored.
        """
        return cls(_core.Tokenizer(os.fspath(path)))

    # -- encoding -------------------------------------------------------------------------

    @staticmethod
    def _flags(allow_special: bool, offsets: bool = False, trim: bool = False) -> int:
        f = _core.TOK_ALLOW_SPECIAL if allow_special else 0
        if offsets:
            f |= _core.TOK_OFFSETS
            if trim:
                f |= _core.TOK_TRIM_OFFSETS
        return f

    def encode(self, text: TextLike, allow_special: bool = True, errors: str = "strict") -> np.ndarray:
        """Token ids of ``text`` as an ``np.ndarray[int32]`` (no BOS is added).

        Args:
            text: ``str``, or ``bytes`` holding UTF-8.
            allow_special: match special tokens (``<|endoftext|>``, ``<|padding|>``) written in
                the text, as Hugging Face does by default. False encodes them as plain text
                (HF's ``encode_special_tokens=True``); non-special added tokens (NeoX's space
                runs) are matched either way, as in HF.
            errors: for ``bytes`` that are not valid UTF-8. ``"strict"`` (default) raises
                ``UnicodeDecodeError`` at the first bad byte; any other Python error handler
                (``"replace"``, ``"ignore"``) decodes the bytes with it first, so ``"replace"``
                gives exactly what HF gives for ``data.decode("utf-8", "replace")``. (HF itself
                only accepts ``str``.) A ``str`` with lone surrogates raises
                ``UnicodeEncodeError``, as in HF.

        Long texts (64 KiB and more) are encoded with the GIL released; Ctrl-C stops them.
        """
        return self._core.encode(_as_text(text, errors), self._flags(allow_special))

    def encode_with_offsets(self, text: TextLike, allow_special: bool = True,
                            trim_offsets: Optional[bool] = None,
                            errors: str = "strict") -> Tuple[np.ndarray, np.ndarray]:
        """Ids and the character span of each token: ``(ids, offsets)``.

        ``offsets`` is an ``int64`` array of shape ``[n, 2]``: token ``i`` covers
        ``text[offsets[i, 0]:offsets[i, 1]]`` (code-point indices into the ``str``; for
        ``bytes`` input, into its decoded ``str``). They are Hugging Face's offsets
        (``Encoding.offsets``), for highlighting tokens in a report:

        * a token holding part of a character (the bytes of an emoji split over two tokens)
          spans the whole character, so neighbouring tokens can share a span;
        * with NFC (GPT-NeoX), spans point into the original text through HF's alignments;
        * ``trim_offsets`` (default: the tokenizer file's post-processor, see
          :attr:`trim_offsets`) removes the leading and trailing spaces of each span as HF's
          ByteLevel post-processor does: ``" world"`` covers ``"world"`` and a token made only of
          spaces gets an empty span at its end. ``False`` gives the raw spans, which tile the
          text.
        """
        trim = self.trim_offsets if trim_offsets is None else bool(trim_offsets)
        return self._core.encode(_as_text(text, errors), self._flags(allow_special, True, trim))

    def encode_batch(self, texts: Iterable[TextLike], allow_special: bool = True,
                     num_threads: Optional[int] = None, errors: str = "strict") -> List[np.ndarray]:
        """Encode many texts in parallel: a list of ``np.ndarray[int32]``, one per text.

        The GIL is released and the texts are spread over ``num_threads`` OpenMP threads
        (default: ``ctxlookup._core.get_num_threads()``). Ctrl-C stops the batch. Same
        arguments and results as :meth:`encode`.
        """
        if isinstance(texts, (str, bytes)):
            raise TypeError("encode_batch takes a sequence of texts, not a single text")
        items = []
        for i, t in enumerate(texts):
            try:
                items.append(_as_text(t, errors))
            except (TypeError, UnicodeDecodeError) as e:
                if isinstance(e, UnicodeDecodeError):
                    raise
                raise TypeError(f"texts[{i}]: {e}") from None
        n = 0 if num_threads is None else int(num_threads)
        if num_threads is not None and n < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        return self._core.encode_batch(items, self._flags(allow_special), n)

    # -- decoding -------------------------------------------------------------------------

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """The text of a sequence of ids (list, numpy array, or CPU tensor; 1-D or a scalar).

        Bytes are joined first and then decoded as UTF-8, with U+FFFD for invalid sequences
        exactly as HF's ByteLevel decoder (``String::from_utf8_lossy``). Special tokens are kept
        unless ``skip_special_tokens`` (note: HF's ``Tokenizer.decode`` defaults to skipping
        them; transformers' and TransformerLens's do not). An id outside the vocabulary raises
        ``ValueError`` (HF silently drops it). ``decode(encode(s)) == s`` for every ``str`` s with
        GPT-2; with an NFC normalizer (GPT-NeoX) it gives the NFC form of s, as HF does.
        """
        return self._core.decode(_ids_arg(ids), bool(skip_special_tokens))

    def to_str_tokens(self, ids_or_text, allow_special: bool = True) -> Union[List[str], List[List[str]]]:
        """Each token decoded alone, as TransformerLens's ``to_str_tokens``.

        Takes a text (encoded first) or ids (1-D; a 2-D batch gives a list per row). A token
        that holds part of a multi-byte character decodes to U+FFFD, as in HF.
        """
        if isinstance(ids_or_text, (str, bytes, bytearray)):
            return self._core.decode_each(self.encode(ids_or_text, allow_special))
        arr = _ids_arg(ids_or_text)
        if isinstance(arr, np.ndarray) and arr.ndim == 2:
            return [self._core.decode_each(row) for row in arr]
        return self._core.decode_each(arr)

    # -- vocabulary -----------------------------------------------------------------------

    def token_to_id(self, token: str) -> Optional[int]:
        """Id of a token string as written in the tokenizer files (``"Ġthe"``,
        ``"<|endoftext|>"``), or None."""
        return self._core.token_to_id(token)

    def id_to_token(self, id: int) -> str:
        """Token string of an id as written in the tokenizer files (``"Ġthe"``); ``ValueError``
        when the id is not in the vocabulary."""
        tok = self._core.id_to_token(int(id))
        if tok is None:
            raise ValueError(f"token id {id} is not in the vocabulary (size {self.vocab_size})")
        return tok

    @property
    def special_token_ids(self) -> List[int]:
        """Ids of the special added tokens (``<|endoftext|>``, ``<|padding|>``)."""
        return [i for i, _, _ in self._core.special_tokens()]

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"Tokenizer(path={self.path!r}, vocab_size={self.vocab_size}, "
                f"bos={self.bos_token_id}, eos={self.eos_token_id}, pad={self.pad_token_id})")


def _ids_arg(ids):
    """Lists, tuples, numpy arrays and CPU tensors of ints."""
    if isinstance(ids, (int, np.integer)):
        return np.asarray([ids])
    if hasattr(ids, "detach") and hasattr(ids, "cpu"):  # torch.Tensor
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu" and arr.size:
        raise TypeError(f"token ids must be integers, got dtype {arr.dtype}")
    if arr.size == 0:
        arr = arr.astype(np.int64)
    return arr
