"""Plain torch.distributions: sampling, rsample gradients, log-probs, a mixture and KL."""

import torch
from torch import distributions as D

device = "mps" if torch.backends.mps.is_available() else "cpu"
torch.manual_seed(0)

loc = torch.zeros(3, device=device, requires_grad=True)
scale = torch.ones(3, device=device)
normal = D.Normal(loc, scale)
x = normal.rsample((4,))
x.pow(2).sum().backward()
print(
    "normal log_prob",
    f"{normal.log_prob(x).sum().item():.5f}",
    "grad",
    [f"{g:.5f}" for g in loc.grad.tolist()],
)

cov = torch.eye(3, device=device) * 2.0 + 0.5
mvn = D.MultivariateNormal(torch.zeros(3, device=device), covariance_matrix=cov)
y = mvn.sample((5,))
print(
    "mvn log_prob", f"{mvn.log_prob(y).sum().item():.5f}", "entropy", f"{mvn.entropy().item():.5f}"
)

probs = torch.tensor([0.2, 0.5, 0.3], device=device)
cat = D.Categorical(probs=probs)
draws = cat.sample((1000,))
print(
    "categorical counts",
    torch.bincount(draws.cpu(), minlength=3).tolist(),
    "entropy",
    f"{cat.entropy().item():.5f}",
)

mix = D.MixtureSameFamily(
    D.Categorical(logits=torch.zeros(2, device=device)),
    D.Normal(torch.tensor([-1.0, 1.0], device=device), torch.tensor([0.5, 0.5], device=device)),
)
z = mix.sample((8,))
print("mixture log_prob", f"{mix.log_prob(z).sum().item():.5f}")

beta = D.Beta(torch.tensor([2.0], device=device), torch.tensor([3.0], device=device))
b = beta.sample((6,))
print("beta log_prob", f"{beta.log_prob(b).sum().item():.5f}")
print("kl", f"{D.kl_divergence(D.Normal(loc.detach() + 1, scale), normal).sum().item():.5f}")
