"""Tasks: a head plus a policy (how batches are drawn, the loss, what is measured)."""
