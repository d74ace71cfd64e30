"""Labels for new texts (`zoo classify`): tokenised, truncated and padded as the classifier was trained."""

from __future__ import annotations

import torch

from zoo.models.base import eval_mode
from zoo.tasks.classify.head import Classifier
from zoo.tasks.classify.task import pad, pad_id_for


@torch.no_grad()
def predict(model: Classifier, tokenizer, texts: list[str], device: torch.device,
            batch_size: int = 32) -> list[tuple[str, float]]:
    """(label, probability) of each text, tokenised, truncated and padded as the classifier was trained."""
    config = model.config
    pad_id = pad_id_for(tokenizer)
    with eval_mode(model):
        out = []
        for start in range(0, len(texts), batch_size):
            part = [(model.fit(tokenizer.encode(text)) or [pad_id], 0) for text in texts[start:start + batch_size]]
            x, _, lengths = pad(part, pad_id, model.padded_length())
            probs = model(x.to(device), lengths.to(device)).float().softmax(-1).cpu()
            out += [(config.labels[int(p.argmax())], float(p.max())) for p in probs]
    return out
