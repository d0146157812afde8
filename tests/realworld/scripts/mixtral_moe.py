"""A mixture-of-experts decoder (Mixtral): top-2 routing, router aux loss, backward."""

import torch
from transformers import MixtralConfig, MixtralForCausalLM

device = "mps" if torch.backends.mps.is_available() else "cpu"
torch.manual_seed(0)

config = MixtralConfig(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_local_experts=4,
    num_experts_per_tok=2,
    max_position_embeddings=64,
    output_router_logits=True,
    router_aux_loss_coef=0.02,
)
model = MixtralForCausalLM(config).to(device)

input_ids = torch.randint(0, config.vocab_size, (2, 12)).to(device)
out = model(input_ids=input_ids, labels=input_ids)
out.loss.backward()
print(f"loss {out.loss.item():.5f} aux_loss {out.aux_loss.item():.5f}")
print(f"router grad norm {model.model.layers[0].mlp.gate.weight.grad.norm().item():.5f}")
