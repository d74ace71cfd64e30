"""zoo's char-RNN for transformers (remote code written by `zoo export-hf`): a causal LM that works with
`generate`, `pipeline("text-generation")` and `Trainer`, and a sequence classifier. Only torch and transformers
are needed.

Generation recomputes the recurrent state from the whole prefix at every step (`use_cache = False`): simple
and exact, and cheap for character models. zoo's own `zoo sample` carries the state instead.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast, SequenceClassifierOutputWithPast

from .configuration_zoo_rnn import ZooRNNConfig

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
TORCH_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class ScratchRecurrent(nn.Module):
    """LSTM / GRU / Elman RNN layers from tensor operations, with nn.LSTM's parameter names and gate order
    (LSTM i, f, g, o; GRU r, z, n) and its interface (batch first; dropout between layers). Per step:

        LSTM  i, f, o = sigma(.), g = tanh(.) of W_i x + b_i + W_h h + b_h;  c' = f c + i g;  h' = o tanh(c')
        GRU   r, z = sigma(W_i x + b_i + W_h h + b_h);  n = tanh(W_in x + b_in + r (W_hn h + b_hn))
              h' = (1 - z) n + z h
        RNN   h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
    """

    def __init__(self, cell, input_size, hidden_size, num_layers, dropout=0.0):
        super().__init__()
        self.cell, self.hidden_size, self.num_layers, self.dropout = cell, hidden_size, num_layers, dropout
        width = GATES[cell] * hidden_size
        for k in range(num_layers):
            size = input_size if k == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.zeros(width, size)))
            self.register_parameter(f"weight_hh_l{k}", nn.Parameter(torch.zeros(width, hidden_size)))
            self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.zeros(width)))
            self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.zeros(width)))

    def forward(self, x, state=None):
        batch, steps, _ = x.shape
        zeros = x.new_zeros(self.num_layers, batch, self.hidden_size)
        h0, c0 = (zeros, zeros) if state is None else (state if self.cell == "lstm" else (state, zeros))
        finals_h, finals_c = [], []
        for k in range(self.num_layers):
            if k > 0 and self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)
            w_ih, w_hh = getattr(self, f"weight_ih_l{k}"), getattr(self, f"weight_hh_l{k}")
            b_ih, b_hh = getattr(self, f"bias_ih_l{k}"), getattr(self, f"bias_hh_l{k}")
            from_input = x @ w_ih.t() + b_ih  # every step's input projection at once
            h, c = h0[k], c0[k]
            outputs = []
            for t in range(steps):
                from_hidden = h @ w_hh.t() + b_hh
                if self.cell == "lstm":
                    i, f, g, o = (from_input[:, t] + from_hidden).chunk(4, dim=1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                elif self.cell == "gru":
                    x_r, x_z, x_n = from_input[:, t].chunk(3, dim=1)
                    h_r, h_z, h_n = from_hidden.chunk(3, dim=1)
                    r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
                    n = torch.tanh(x_n + r * h_n)
                    h = (1 - z) * n + z * h
                else:
                    h = torch.tanh(from_input[:, t] + from_hidden)
                outputs.append(h)
            x = torch.stack(outputs, dim=1)
            finals_h.append(h)
            finals_c.append(c)
        h_n = torch.stack(finals_h)
        return x, ((h_n, torch.stack(finals_c)) if self.cell == "lstm" else h_n)


class ZooRNNPreTrainedModel(PreTrainedModel):
    config_class = ZooRNNConfig
    base_model_prefix = "zoo_rnn"
    main_input_name = "input_ids"

    def _init_weights(self, module):
        """Weights come from the exported checkpoint; fresh models keep torch's default initialisation."""

    @classmethod
    def _supports_default_dynamic_cache(cls):
        return False  # a recurrent model has no key/value cache to fill

    def _build_backbone(self, config):
        if config.input == "embedding":
            in_size = config.embedding_dim or config.hidden_size
            self.embedding = nn.Embedding(config.vocab_size, in_size)
        else:
            in_size = config.vocab_size
            self.embedding = None
        between = config.dropout if config.num_layers > 1 else 0.0
        if config.impl == "scratch":
            self.rnn = ScratchRecurrent(config.cell, in_size, config.hidden_size, config.num_layers, between)
        else:
            self.rnn = TORCH_CELLS[config.cell](in_size, config.hidden_size, config.num_layers, batch_first=True,
                                                dropout=between)
        self.drop = nn.Dropout(config.dropout)

    def _hidden(self, input_ids):
        """The last layer's hidden state at every position, [B, T, hidden]."""
        # ids past the vocabulary (a padding token the tokenizer adds) only ever follow the real tokens, which a
        # left-to-right recurrence never lets them influence
        ids = input_ids.masked_fill(input_ids >= self.config.vocab_size, 0)
        if self.embedding is not None:
            x = self.embedding(ids)
        else:
            x = F.one_hot(ids, self.config.vocab_size).to(self.rnn.weight_ih_l0.dtype)
        out, _ = self.rnn(x)
        return self.drop(out)

    def get_input_embeddings(self):
        return self.embedding


class ZooRNNForCausalLM(ZooRNNPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "embedding.weight"}

    def __init__(self, config):
        super().__init__(config)
        self._build_backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        logits = self.lm_head(self._hidden(input_ids))
        loss = None
        if labels is not None:  # labels are the inputs; position t predicts token t + 1
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)


class ZooRNNForSequenceClassification(ZooRNNPreTrainedModel):
    """A linear head (no bias) on the hidden state at each sequence's last real token (right padding)."""

    def __init__(self, config):
        super().__init__(config)
        self._build_backbone(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        hidden = self._hidden(input_ids)
        if attention_mask is not None:
            last = attention_mask.long().sum(dim=1) - 1
        elif self.config.pad_token_id is not None:
            last = (input_ids != self.config.pad_token_id).long().sum(dim=1) - 1
        else:
            last = torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
        logits = self.score(hidden[torch.arange(input_ids.shape[0], device=input_ids.device), last])
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutputWithPast(loss=loss, logits=logits)
