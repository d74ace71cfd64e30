"""Labels for new texts (`zoo classify`): tokenised, truncated and padded as the classifier was trained."""

from __future__ import annotations

import torch

from zoo.tasks.classify.head import Classifier
from zoo.tasks.classify.task import batched_logits, pad_id_for


@torch.no_grad()
def predict(model: Classifier, tokenizer, texts: list[str], device: torch.device,
            batch_size: int = 32) -> list[tuple[str, float]]:
    """(label, probability) of each text, tokenised, truncated and padded as the classifier was trained."""
    labels, pad_id = model.config.labels, pad_id_for(tokenizer)
    examples = [(model.fit(tokenizer.encode(text)) or [pad_id], 0) for text in texts]
    return [(labels[int(p.argmax())], float(p.max()))
            for _, _, logits in batched_logits(model, examples, batch_size, pad_id, model.padded_length(), device)
            for p in logits.softmax(-1).cpu()]
