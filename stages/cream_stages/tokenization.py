"""The one tokenisation of a conversation, shared by score, dpo and sft (and sample's prompts).

A conversation is rendered with the model's chat template and cut into segments at the assistant
turns: the text before an assistant's content (template tokens and prompt) is masked, the
assistant's content and its end-of-turn marker are the target. Each segment is tokenised on its
own, so the prompt's tokens are exactly those `sample` fed to the model, and the response's
tokens never merge with the template's. Truncation to max_length keeps the prompt and cuts the
response, identically wherever a score or a loss is computed: that is what lets dpo reuse score's
log-probs as its reference.
"""

from __future__ import annotations

from dataclasses import dataclass

from .contract import StageInputError


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    target_mask: list[int]  # 1 where the token is a response token (scored / trained on)
    truncated: bool = False

    @property
    def n_targets(self) -> int:
        return sum(self.target_mask)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _ids(tokenizer, text: str) -> list[int]:
    # The template already wrote the special tokens (bos etc.): add none.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_text(tokenizer, prompt: str) -> str:
    """The text a model continues to answer `prompt`: [user: prompt] + the generation prompt."""
    return render(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)


def _segments(tokenizer, messages: list[dict]) -> list[tuple[str, bool]]:
    """(text, is_target) pieces whose concatenation is the rendered conversation."""
    full = render(tokenizer, messages)
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for k, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:k], add_generation_prompt=True)
        through = render(tokenizer, messages[: k + 1])
        if not (full.startswith(through) and through.startswith(before) and len(before) >= pos):
            raise StageInputError(
                "the model's chat template does not render a conversation as its prefix plus "
                "the assistant's reply, so response tokens cannot be told apart"
            )
        pieces.append((full[pos:len(before)], False))
        pieces.append((full[len(before):len(through)], True))
        pos = len(through)
    if pos < len(full):
        pieces.append((full[pos:], False))
    return [(text, target) for text, target in pieces if text]


def encode_conversation(tokenizer, messages: list[dict], max_length: int) -> Encoded:
    """Token ids and target mask of a conversation, at most max_length tokens.

    Over-long: the first segment (everything up to the first response) is kept and the rest is
    cut from the right; a first segment that alone leaves no room for one response token keeps
    its last max_length - 1 tokens (the end of the prompt and the generation prompt matter most).
    """
    ids: list[int] = []
    mask: list[int] = []
    for text, target in _segments(tokenizer, messages):
        seg = _ids(tokenizer, text)
        ids.extend(seg)
        mask.extend([int(target)] * len(seg))
    if len(ids) <= max_length:
        return Encoded(ids, mask)
    first = mask.index(1) if 1 in mask else len(mask)
    if first >= max_length:
        drop = first - (max_length - 1)
        ids, mask = ids[drop:], mask[drop:]
    return Encoded(ids[:max_length], mask[:max_length], truncated=True)


def encode_pair(tokenizer, prompt: str, response: str, max_length: int) -> Encoded:
    """[user: prompt, assistant: response]: the unit of score and dpo."""
    return encode_conversation(
        tokenizer,
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
        max_length,
    )
