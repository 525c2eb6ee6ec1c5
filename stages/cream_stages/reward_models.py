"""External reward models: loading them and scoring [prompt, response] with them.

Two kinds rank sampled responses instead of the policy's own reward:

- **classic**: a scalar head on a causal LM, the checkpoint layout Hugging Face's reward models
  and TRL's RewardTrainer use (`AutoModelForSequenceClassification` with one label). Its reward
  is the head's output at the last token of [user: prompt, assistant: response], the token the
  library itself pools (the last one that is not padding), so a reward here is the reward the
  model was trained to give.
- **cloud**: Critique-out-Loud (Ankner et al. 2024). A causal LM first writes a critique of the
  response with its language-model head, answering CRITIQUE_REQUEST as the next user turn; then
  a linear reward head reads the decoder's last hidden state (after the final norm) at the last
  token of [user: prompt, assistant: response, user: CRITIQUE_REQUEST, assistant: critique]. The
  layout: an ordinary causal-LM checkpoint with its reward head's file beside it
  (cloud_head.py). Critiques are greedy, so a reward is a function of its inputs.

Conversations are tokenised as score and dpo tokenise them (tokenization.py), so truncation to
max_length keeps the prompt and cuts the end. Every forward is padded on the right with an
attention mask: a response's reward does not depend on its batch (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .cloud_head import load_cloud_head
from .contract import StageInputError
from .models import fit_threads, load_model, load_tokenizer, resolve_model_uri, torch_dtype
from .tokenization import encode_conversation

# The question a CLoud reward model answers before it scores: our wording of the paper's prompt.
CRITIQUE_REQUEST = ("Critique the assistant's response to my question above: is it correct and "
                    "useful, and where does it fall short?")


def conversation(prompt: str, response: str, critique: str | None = None) -> list[dict]:
    """The turns a reward model reads: the exchange, and for CLoud the critique after it."""
    turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    if critique is not None:
        turns += [{"role": "user", "content": CRITIQUE_REQUEST},
                  {"role": "assistant", "content": critique}]
    return turns


def critique_request(prompt: str, response: str) -> list[dict]:
    """What a CLoud model continues to write its critique (add the generation prompt)."""
    return [*conversation(prompt, response), {"role": "user", "content": CRITIQUE_REQUEST}]


@dataclass
class RewardModel:
    """A loaded reward model: `kind` says which forward gives the reward."""

    kind: str
    model: object  # classic: *ForSequenceClassification; cloud: *ForCausalLM
    tokenizer: object
    head: object | None = None  # cloud: torch.nn.Linear(hidden, 1)

    @property
    def device(self):
        return self.model.device


def load_reward_model(uri: str, kind: str, precision: str, device: str) -> RewardModel:
    """Load a classic or CLoud reward model from any model URI (models.py)."""
    from transformers import AutoModelForSequenceClassification  # noqa: PLC0415

    if kind == "cloud":
        model, tokenizer, path = load_model(uri, precision, device)
        head = load_cloud_head(Path(path), model.config.hidden_size, torch_dtype(precision),
                                model.device)
        return RewardModel("cloud", model, tokenizer, head)
    path = resolve_model_uri(uri)
    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=torch_dtype(precision))
    except ValueError as exc:  # the architecture has no sequence-classification class
        raise StageInputError(f"{uri}: not a classic reward model: {exc}") from exc
    if model.config.num_labels != 1:
        raise StageInputError(f"{uri}: not a scalar reward model: its head has "
                              f"{model.config.num_labels} outputs, a reward model has 1")
    # The library pools the last token that is not padding: it must know the pad id.
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device).eval()
    fit_threads(model)
    return RewardModel("classic", model, tokenizer)


def _padded(ids: list[list[int]], pad_id: int, device):
    import torch  # noqa: PLC0415

    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
    return input_ids.to(device), mask.to(device)


def rewards(rm: RewardModel, conversations: list[list[dict]], max_length: int,
            batch_size: int) -> list[float]:
    """The scalar reward of each conversation, in order (float32 on the way out)."""
    import torch  # noqa: PLC0415

    tok = rm.tokenizer
    ids = [encode_conversation(tok, turns, max_length).input_ids for turns in conversations]
    # Longest first: batches of similar lengths pad least; the order is restored below.
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out = [0.0] * len(ids)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            input_ids, mask = _padded([ids[i] for i in chunk], tok.pad_token_id, rm.device)
            if rm.kind == "classic":
                values = rm.model(input_ids=input_ids, attention_mask=mask).logits[:, 0]
            else:
                # The decoder alone: its last hidden state is after the final norm, and the
                # language-model head's [tokens x vocab] logits are never made.
                hidden = rm.model.base_model(input_ids=input_ids,
                                             attention_mask=mask).last_hidden_state
                last = mask.sum(dim=1) - 1
                values = rm.head(hidden[torch.arange(len(chunk)), last]).squeeze(-1)
            for i, value in zip(chunk, values.float().tolist(), strict=True):
                out[i] = value
    return out
