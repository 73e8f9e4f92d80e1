"""Why the optimizer's beta2/epsilon (and clipping) matter for MGPP: Adam normalises the prior's
gradient, so a weight just off zero that meets the spike's huge pull gets a step of about
lr*(1-beta1)/sqrt(1-beta2): 3.2*lr at beta2=0.999, 0.7*lr at the authors' 0.98. The first throws it
past the spike's reach, the second keeps it there. Also: fp16 gradients still carrying the loss
scale are unscaled before the prior is added."""

import torch

from mgpp import preset
from mgpp.callback import PruningCallback
from mgpp.priors import MixtureGaussian

from conftest import tiny_bert

PRIOR = MixtureGaussian(lam=1e-7, sigma0_sq=1e-10, sigma1_sq=0.05)  # crossover 7.2e-5


def regrowth_after_a_prune(beta2: float, eps: float, n=3668, lr=1e-4, held=100, free=9, k=1000):
    """|theta| of k weights that the loss barely cares about (gradient noise 1e-4), held at zero by a
    prune at every step (as after t_f), then left to the loss and the prior for ``free`` steps."""
    theta = torch.nn.Parameter(torch.zeros(k))
    opt = torch.optim.AdamW([theta], lr=lr, betas=(0.9, beta2), eps=eps, weight_decay=0.0)
    noise = torch.Generator().manual_seed(0)
    for step in range(held + free):
        theta.grad = 1e-4 * torch.randn(k, generator=noise)
        PRIOR.add_grad_([theta.data], [theta.grad], 1.0 / n)
        opt.step()
        if step < held:
            theta.data.zero_()
    return theta.detach().abs()


def test_beta2_decides_whether_the_spike_holds_pruned_weights():
    crossover = PRIOR.crossover()
    hf_default = regrowth_after_a_prune(beta2=0.999, eps=1e-8)
    authors = regrowth_after_a_prune(beta2=0.98, eps=1e-6)
    # beta2=0.999: thrown out past the spike's reach, and drifting on (median ~5e-4)
    assert hf_default.median() > 3 * crossover
    # beta2=0.98 (MGPP's authors): every weight still inside the spike, so the next prune takes it again
    assert authors.max() < crossover
    assert hf_default.median() > 10 * authors.median()


class ScalingAccelerator:
    """What the callback uses of accelerate's Accelerator under fp16: its torch GradScaler and
    ``unscale_gradients()`` (the AcceleratorState singleton cannot switch to fp16 on a CPU test)."""

    def __init__(self, optimizer, scale):
        self.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
        self.optimizer = optimizer

    def unscale_gradients(self):
        self.scaler.unscale_(self.optimizer)


def test_fp16_scaled_gradients_are_unscaled_before_the_prior():
    """The gradients arrive carrying the loss scale (fp16 with max_grad_norm=0 on Trainers that
    unscale only when clipping): the prior must meet the true gradient, and be unscaled only once."""
    results = []
    for scale in (None, 1024.0):
        model = tiny_bert()
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        accelerator = ScalingAccelerator(optimizer, scale) if scale else None
        pruning = PruningCallback(preset("l2", sparsity=0.5, sigma1_sq=0.05, t_i=0, t_f=10), train_size=1)
        pruning.trainer = type("Trainer", (), {"accelerator": accelerator, "optimizer": optimizer})()
        pruning.setup(model, total_steps=10)
        loss = model(input_ids=torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([1])).loss
        (accelerator.scaler.scale(loss) if scale else loss).backward()
        pruning.on_pre_optimizer_step(None, type("State", (), {"global_step": 0})(), None)
        results.append([p.grad.clone() for p in pruning.targets.params])
        if scale:  # the optimizer step does not unscale a second time
            accelerator.scaler.step(optimizer)
    unscaled, from_scaled = results
    for expected, got in zip(unscaled, from_scaled):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
