"""An encoder masked-LM training step (BERT): loss, backward, AdamW, a second forward."""

import torch
from transformers import BertConfig, BertForMaskedLM

device = "mps" if torch.backends.mps.is_available() else "cpu"
torch.manual_seed(0)

config = BertConfig(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)
model = BertForMaskedLM(config).to(device)
model.train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

input_ids = torch.randint(5, config.vocab_size, (4, 16))
labels = torch.full_like(input_ids, -100)
masked = torch.rand(input_ids.shape) < 0.15
masked[:, 3] = True
labels[masked] = input_ids[masked]
input_ids[masked] = 4  # the [MASK] id of this made-up vocabulary
input_ids, labels = input_ids.to(device), labels.to(device)
attention_mask = torch.ones_like(input_ids)

for step in range(2):
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    optimizer.zero_grad()
    out.loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    print(f"step {step} loss {out.loss.item():.5f} grad_norm {grad_norm.item():.5f}")
