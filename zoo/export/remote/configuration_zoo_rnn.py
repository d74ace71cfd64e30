"""Configuration of zoo's char-RNN for transformers (remote code written by `zoo export-hf`)."""

from transformers import PretrainedConfig


class ZooRNNConfig(PretrainedConfig):
    """A char-RNN: embedded or one-hot input -> stacked LSTM/GRU/RNN -> linear head.

    `impl` is "torch" (nn.LSTM / nn.GRU / nn.RNN) or "scratch" (the same layers written from tensor
    operations, as zoo trained them); both have the same parameters and compute the same function."""

    model_type = "zoo_rnn"
    attribute_map = {"num_hidden_layers": "num_layers"}

    def __init__(self, vocab_size=65, cell="lstm", impl="torch", input="embedding", embedding_dim=0, hidden_size=256,
                 num_layers=2, dropout=0.0, tie_word_embeddings=False, use_cache=False, **kwargs):
        self.vocab_size = vocab_size
        self.cell = cell
        self.impl = impl
        self.input = input
        self.embedding_dim = embedding_dim
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.use_cache = use_cache  # generation re-reads the whole prefix: the model keeps no cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
