"""Canonical samples to token ids and labels, with the loss mask the format asks for.

Chat samples are rendered through the tokenizer's chat template, one assistant turn at a time: the
text the template produces for the conversation up to a turn (with the generation prompt) is the
untrained prefix, what it adds for the turn itself (its content and end-of-turn token) is trained.
That works with any template that renders earlier turns the same way whatever follows (ChatML,
Llama, Mistral, Gemma, Phi, Qwen, GLM); one that does not is reported instead of trained wrongly.
Text is tokenized in one pass with character offsets, so masking never changes the tokens the model
sees: a token is trained when its last character lies in a trained segment.
"""

from __future__ import annotations

from typing import Any

from cynode.errors import DatasetError

from .sample import IGNORE_INDEX, Sample, Segment, TokenizedPair, TokenizedSample

# Used when a tokenizer has no chat template: ChatML, as plain text.
_FALLBACK_TURN = "<|im_start|>{role}\n{content}<|im_end|>\n"
_FALLBACK_PROMPT = "<|im_start|>assistant\n"

Piece = tuple[str | tuple[int, ...], bool]  # text or token ids, trained or not


class SampleTokenizer:
    """Tokenizes samples for one tokenizer; holds what it learns about it once."""

    def __init__(self, tokenizer: Any, max_seq_len: int) -> None:
        self.tok = tokenizer
        self.max_len = max_seq_len
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self.fast = bool(getattr(tokenizer, "is_fast", False))
        # Special tokens the tokenizer puts in front of plain text (Llama's BOS; none for ChatML models).
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        self.prefix_ids = tuple(probe[: len(probe) - len(plain)]) if probe[-len(plain):] == plain else ()
        self.eos_id = tokenizer.eos_token_id
        self.vocab_size = len(tokenizer)

    def __call__(self, sample: Sample) -> TokenizedSample | TokenizedPair:
        if sample.rejected is None:
            return self._encode(sample, sample.segments)
        prompt = sample.prompt
        return TokenizedPair(self._encode(sample, sample.segments), self._encode(sample, prompt + sample.rejected))

    def _encode(self, sample: Sample, segments: tuple[Segment, ...]) -> TokenizedSample:
        if any(s.role is not None for s in segments):
            pieces = self._render_chat(sample, segments)
        else:
            # Token ids given by the user are taken as they are; text gets the tokenizer's usual prefix.
            as_text = any(s.token_ids is None for s in segments)
            pieces = [(self.prefix_ids, False)] if self.prefix_ids and as_text else []
            pieces += [(s.token_ids if s.token_ids is not None else s.text, s.train) for s in segments]
            if sample.eos:
                if self.eos_id is None:
                    raise DatasetError(sample.file, "the tokenizer has no EOS token to end samples with")
                pieces.append(((self.eos_id,), True))
        ids, labels = self._pieces_to_ids(pieces)
        for tok in ids:
            if not 0 <= tok < self.vocab_size:
                raise DatasetError(sample.file, f"holds token id {tok}, outside the tokenizer's {self.vocab_size} ids",
                                   row=sample.row, field="input_ids",
                                   expected=f"ids below {self.vocab_size}", format="tokenized")
        truncated = len(ids) > self.max_len
        return TokenizedSample(ids[: self.max_len], labels[: self.max_len], truncated=truncated)

    def _pieces_to_ids(self, pieces: list[Piece]) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        i = 0
        while i < len(pieces):
            content, _ = pieces[i]
            if isinstance(content, tuple):
                ids.extend(content)
                labels.extend(content if pieces[i][1] else [IGNORE_INDEX] * len(content))
                i += 1
                continue
            j = i
            while j < len(pieces) and isinstance(pieces[j][0], str):
                j += 1
            run_ids, run_labels = self._encode_text([(str(p[0]), p[1]) for p in pieces[i:j]])
            ids.extend(run_ids)
            labels.extend(run_labels)
            i = j
        return ids, labels

    def _encode_text(self, parts: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
        if not self.fast:  # no offsets: tokenize each part on its own
            ids, labels = [], []
            for text, train in parts:
                part_ids = self.tok(text, add_special_tokens=False)["input_ids"]
                ids.extend(part_ids)
                labels.extend(part_ids if train else [IGNORE_INDEX] * len(part_ids))
            return ids, labels
        text = "".join(t for t, _ in parts)
        trained = bytearray(len(text))
        pos = 0
        for part, train in parts:
            if train:
                trained[pos: pos + len(part)] = b"\x01" * len(part)
            pos += len(part)
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = []
        for tok, (start, end) in zip(ids, enc["offset_mapping"]):
            last = max(start, end - 1)
            labels.append(tok if last < len(trained) and trained[last] else IGNORE_INDEX)
        return ids, labels

    def _render_chat(self, sample: Sample, segments: tuple[Segment, ...]) -> list[Piece]:
        messages = [{"role": s.role or "user", "content": s.text} for s in segments]
        pieces: list[Piece] = []
        done = ""
        for i, seg in enumerate(segments):
            if seg.role != "assistant":
                continue
            head = self._render(sample, messages[:i], generation_prompt=True)
            full = self._render(sample, messages[: i + 1], generation_prompt=False)
            if not head.startswith(done) or not full.startswith(head):
                raise DatasetError(
                    sample.file,
                    "the tokenizer's chat template renders earlier turns differently once later turns follow, "
                    "so the assistant turns cannot be masked; use the segments format for this model",
                    row=sample.row, format="messages",
                )
            pieces += [(head[len(done):], False), (full[len(head):], seg.train)]
            done = full
        rest = self._render(sample, messages, generation_prompt=False)
        if rest.startswith(done) and len(rest) > len(done):
            pieces.append((rest[len(done):], False))
        return [p for p in pieces if p[0]]

    def _render(self, sample: Sample, messages: list[dict], *, generation_prompt: bool) -> str:
        if not messages:
            return ""
        if not self.has_template:
            text = "".join(_FALLBACK_TURN.format(**m) for m in messages)
            return text + (_FALLBACK_PROMPT if generation_prompt else "")
        try:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as exc:  # jinja2 raises TemplateError for what a template refuses (e.g. no system role)
            raise DatasetError(sample.file, f"the tokenizer's chat template refuses it: {exc}",
                               row=sample.row, format="messages") from None

