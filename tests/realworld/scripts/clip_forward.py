"""A vision-language model (CLIP): image and text towers, contrastive logits and loss."""

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

device = "mps" if torch.backends.mps.is_available() else "cpu"
torch.manual_seed(0)

text = CLIPTextConfig(
    vocab_size=99,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=16,
)
vision = CLIPVisionConfig(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
)
config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
model = CLIPModel(config).eval().to(device)

input_ids = torch.randint(1, text.vocab_size, (3, 10)).to(device)
pixel_values = torch.randn(2, 3, 32, 32).to(device)
with torch.no_grad():
    out = model(input_ids=input_ids, pixel_values=pixel_values, return_loss=False)
probs = out.logits_per_image.softmax(dim=-1)
print(
    "logits_per_image", [[f"{v:.5f}" for v in row] for row in out.logits_per_image.cpu().tolist()]
)
print("probs", [[f"{v:.5f}" for v in row] for row in probs.cpu().tolist()])
