"""Every architecture, as an SAE and as a crosscoder, against its dense reference formula.

The references are written here from the papers' formulas with dense codes and the
crosscoder's per-model decoders ([d_sae, models, d]); autograd differentiates them, except
the JumpReLU thresholds, whose straight-through gradient is written out (Rajamanoharan et
al. 2024, eqs. 11-12). Each is compared with the architecture's sparse loss: the forward
code and reconstruction, the loss and the gradient of every parameter (float64).
"""

from __future__ import annotations

import pytest
import torch

from layerdrift.config import ARCHITECTURE_NAMES, DictionaryConfig
from layerdrift.tasks.dictionary import ARCHITECTURES, DictionarySpec, build, sparse

D, S, B, K = 8, 24, 40, 3


def _model(architecture: str, n_models: int, **kw):
    spec = DictionarySpec(D, S, architecture, n_models, k=K, **kw)
    model = build(spec, torch.Generator().manual_seed(0)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, n_models, D, generator=g, dtype=torch.float64) + 0.3
    x[:, -1] *= 3.0  # the models at different scales
    model.init_from_sample(x)
    with torch.no_grad():
        model.b_enc.copy_(0.3 * torch.randn(S, generator=g, dtype=torch.float64))
        model.W_dec.mul_(torch.rand(S, 1, generator=g, dtype=torch.float64) + 0.5)
        if architecture == "jumprelu":
            model.threshold.copy_(torch.rand(S, generator=g, dtype=torch.float64))
    dead = torch.zeros(S, dtype=torch.bool)
    dead[::4] = True
    return model, x, dead


def _dense(model, x: torch.Tensor):
    """Normalised input [B, M, d], pre-activations [B, S] and per-model parameter views."""
    m = x.shape[1]
    xn = x * model.scale[None, :, None]
    W_enc = model.W_enc.view(m, D, S)  # noqa: N806
    W_dec = model.W_dec.view(S, m, D)  # noqa: N806
    b_dec = model.b_dec.view(m, D)
    pre = torch.einsum("bmi,mis->bs", xn - b_dec, W_enc) + model.b_enc
    return xn, pre, W_dec, b_dec


def _decode(f, W_dec, b_dec):  # noqa: N803
    return torch.einsum("bs,smi->bmi", f, W_dec) + b_dec


def _aux(model, pre, f_residual, W_dec, dead):  # noqa: N803
    k_aux = min(model.spec.d_in // 2, int(dead.sum()))
    top = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=1)
    f_aux = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    aux_recon = torch.einsum("bs,smi->bmi", f_aux, W_dec)
    return ((aux_recon - f_residual) ** 2).mean() / (f_residual**2).mean()


def _reference(model, x, dead):
    """(codes [B, S] in normalised units, reconstruction [B, M, d] normalised, loss)."""
    xn, pre, W_dec, b_dec = _dense(model, x)  # noqa: N806
    name = model.spec.architecture
    if name == "topk":
        top = pre.topk(K, dim=1)
        f = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    elif name == "batchtopk":
        flat = pre.relu().flatten()
        top = flat.topk(K * len(pre))
        f = torch.zeros_like(flat).scatter(0, top.indices, top.values).view_as(pre)
    elif name == "jumprelu":
        f = pre * (pre > model.threshold).detach()
    else:
        f = pre.relu()
    recon = _decode(f, W_dec, b_dec)
    mse = ((recon - xn) ** 2).mean()
    if name in ("topk", "batchtopk"):
        loss = mse + model.spec.aux_coefficient * _aux(
            model, pre, (xn - recon).detach(), W_dec, dead
        )
    elif name == "jumprelu":
        l0 = (pre > model.threshold).double().sum() / len(pre)
        loss = mse + model.spec.l0_coefficient * l0 / model.spec.d_in
    else:
        weights = W_dec.norm(dim=2).sum(dim=1)
        loss = mse + model.spec.l1_coefficient * (f * weights).sum(dim=1).mean()
    return f, pre, recon, mse, loss


def _jump_threshold_grad(model, x, f, pre, mse) -> torch.Tensor:
    """The straight-through gradient of the loss for the thresholds θ [S]."""
    theta, eps = model.threshold.detach(), model.spec.bandwidth
    (grad_f,) = torch.autograd.grad(mse, f, retain_graph=True)
    window = ((pre.detach() - theta).abs() < eps / 2).double()
    from_recon = (grad_f * -(theta / eps) * window).sum(dim=0)
    from_l0 = (-(1 / eps) * window).sum(dim=0) / len(pre)
    return from_recon + model.spec.l0_coefficient / model.spec.d_in * from_l0


def test_the_registry_holds_the_configs_architectures():
    assert set(ARCHITECTURES) == set(ARCHITECTURE_NAMES)
    assert DictionaryConfig.model_fields["architecture"].default in ARCHITECTURES
    with pytest.raises(ValueError, match="unknown dictionary architecture 'gated'"):
        DictionarySpec(D, S, "gated")


PATHS = [("topk", "sparse"), ("batchtopk", "sparse"), ("jumprelu", "sparse"), ("relu", "sparse")]
PATHS += [("jumprelu", "dense"), ("relu", "dense")]  # TopK codes are always sparse


@pytest.mark.parametrize("n_models", [1, 2], ids=["sae", "crosscoder"])
@pytest.mark.parametrize(("architecture", "path"), PATHS)
def test_loss_and_every_gradient_match_the_dense_formula(architecture, n_models, path, monkeypatch):
    """Either path of the loss: pairs only, or dense products when many latents are active."""
    monkeypatch.setattr(sparse, "DENSE_ABOVE", 0.0 if path == "dense" else 1.0)
    kw = {"bandwidth": 0.4, "l0_coefficient": 2.0, "l1_coefficient": 0.05}
    model, x, dead = _model(architecture, n_models, **kw)
    loss, parts, fired = model.loss(x, dead)
    loss.backward()
    # The sparse path's encoder gradient arrives in the encoder's own memory layout, so
    # autograd keeps it without a transposing copy.
    assert model.W_enc.grad.stride() == model.W_enc.stride() == (1, model.W_enc.shape[0])
    ours = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    f, pre, recon, mse, reference = _reference(model, x, dead)
    torch.testing.assert_close(loss, reference, rtol=1e-10, atol=1e-12)
    assert parts["l0"] == pytest.approx(float((f > 0).sum()) / B)
    torch.testing.assert_close(fired, (f > 0).any(dim=0))
    threshold_grad = None
    if architecture == "jumprelu":
        threshold_grad = _jump_threshold_grad(model, x, f, pre, mse)
        assert threshold_grad.abs().sum() > 0  # the window holds pairs
    reference.backward()
    for name, p in model.named_parameters():
        expected = threshold_grad if name == "threshold" else p.grad
        torch.testing.assert_close(ours[name], expected, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("n_models", [1, 2], ids=["sae", "crosscoder"])
@pytest.mark.parametrize("architecture", ["topk", "batchtopk", "jumprelu", "relu"])
def test_encode_and_forward_match_the_inference_formula(architecture, n_models):
    model, x, _ = _model(architecture, n_models)
    xn, pre, W_dec, b_dec = _dense(model, x)  # noqa: N806
    if architecture == "topk":
        top = pre.topk(K, dim=1)
        f = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    elif architecture == "relu":
        f = pre.relu()
    else:  # JumpReLU, and BatchTopK at inference: pre · 1[pre > θ]
        f = pre * (pre > model.threshold)
    code_scale = model.scale[0] if n_models == 1 else 1.0
    recon = _decode(f, W_dec, b_dec) / model.scale[None, :, None]
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x), f / code_scale)
        expected = recon[:, 0] if n_models == 1 else recon
        torch.testing.assert_close(model(x), expected)
        if n_models == 1:
            torch.testing.assert_close(model(x[:, 0]), recon[:, 0])


@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
def test_unit_norm_decoders_lose_the_parallel_gradient(architecture):
    model, x, dead = _model(architecture, 1)
    model.after_step()
    loss, _, _ = model.loss(x, dead)
    loss.backward()
    model.after_backward()
    assert ((model.W_dec.grad * model.W_dec).sum(dim=1)).abs().max() < 1e-12
    norms = model.W_dec.detach().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_batchtopk_keeps_k_per_token_on_average_and_learns_its_threshold():
    model, x, dead = _model("batchtopk", 1)
    _, parts, _ = model.loss(x, dead)
    assert parts["l0"] == pytest.approx(K)
    first = float(model.threshold[0])
    assert first > 0 and (model.threshold == first).all()  # one θ for every latent
    model.loss(x, dead)
    assert float(model.threshold[0]) > first  # the running average moves towards the kept minimum


def test_jumprelu_thresholds_stay_non_negative():
    model, x, _ = _model("jumprelu", 1)
    with torch.no_grad():
        model.threshold.sub_(2.0)
    model.after_step()
    assert (model.threshold >= 0).all()


@pytest.mark.parametrize("architecture", ["jumprelu", "relu"])
def test_folding_decoder_norms_changes_no_output_or_penalty(architecture):
    model, x, dead = _model(architecture, 2)
    with torch.no_grad():
        before_codes, before_out = model.encode(x), model(x)
        before_loss = model.loss(x, dead)[0]
        model.fold_decoder_norms()
        norms = model.W_dec.norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms))
        torch.testing.assert_close(model(x), before_out)
        assert ((model.encode(x) > 0) == (before_codes > 0)).all()
        torch.testing.assert_close(model.loss(x, dead)[0], before_loss)


def test_jumprelu_clips_its_gradient_as_saelens_does():
    """Norm 1 on SAELens's scale (the squared error summed over d_in): 1 / d_in here."""
    model, x, dead = _model("jumprelu", 1, l0_coefficient=2.0, bandwidth=0.4)
    loss, _, _ = model.loss(x, dead)
    (loss * 1e3).backward()  # far above the limit
    model.after_backward()
    norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert float(norm) == pytest.approx(1 / model.spec.d_in)
    assert ARCHITECTURES["relu"].max_grad_norm is None  # the others train unclipped
