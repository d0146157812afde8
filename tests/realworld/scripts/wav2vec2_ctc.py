"""A speech model (Wav2Vec2) on raw audio with CTC loss and backward."""

import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

device = "mps" if torch.backends.mps.is_available() else "cpu"
torch.manual_seed(0)

config = Wav2Vec2Config(
    vocab_size=12,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    conv_dim=(16, 16, 16),
    conv_stride=(5, 2, 2),
    conv_kernel=(10, 3, 3),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    num_feat_extract_layers=3,
    mask_time_prob=0.0,
    ctc_loss_reduction="mean",
    pad_token_id=0,
)
model = Wav2Vec2ForCTC(config).to(device)
model.train()

audio = torch.randn(2, 1600).to(device)
labels = torch.randint(1, config.vocab_size, (2, 8))
labels[1, 6:] = -100  # a shorter second transcript
out = model(audio, labels=labels.to(device))
out.loss.backward()
grad = model.lm_head.weight.grad
print(f"loss {out.loss.item():.5f}")
print(f"logits {tuple(out.logits.shape)} {out.logits.sum().item():.5f}")
print(f"lm_head grad norm {grad.norm().item():.5f}")
