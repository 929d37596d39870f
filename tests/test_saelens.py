"""SAELens reads layerdrift's dictionary files: every architecture, SAE and crosscoder.

``SAE.load_from_disk`` must build the architecture SAELens knows (``standard``, ``topk``,
``jumprelu``) from the 6.x config without its pre-6.0 shim, and give the same codes and
reconstruction as layerdrift; ``fold_W_dec_norm`` must change nothing (the decoder rows are
unit norm). Skipped only when sae_lens is not installed (``pip install 'layerdrift[saelens]'``;
``make test`` installs it).
"""

from __future__ import annotations

import pytest
import torch
from test_dictionary_files import trained_like

from layerdrift.tasks.dictionary import ARCHITECTURES, save_dictionary
from layerdrift.tasks.dictionary.files import SAELENS_VERSION

sae_lens = pytest.importorskip("sae_lens")


@pytest.mark.parametrize("n_models", [1, 2], ids=["sae", "crosscoder"])
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_saelens_loads_every_architecture_with_the_same_reconstruction(
    tmp_path, architecture, n_models
):
    from sae_lens import SAE
    from sae_lens.loading.pretrained_sae_loaders import handle_config_defaulting

    model, x = trained_like(architecture, n_models, seed=1)
    url = str(tmp_path / "d")
    metadata = {"model_name": "some/model", "hook_name": "hook_full_embed", "hf_hook_name": "e"}
    save_dictionary(model, url, metadata, {"store_generation": "g"}, torch.full((24,), 0.1))
    sae = SAE.load_from_disk(url)
    assert sae.cfg.architecture() == model.saelens_architecture
    assert sae.cfg.metadata.model_name == "some/model"
    assert sae.cfg.metadata.sae_lens_version == SAELENS_VERSION
    assert sae.cfg.metadata.hf_hook_name == "e"
    if n_models == 1:
        inputs, scale = x, torch.ones(1)
    else:  # a crosscoder file is an SAE over the concatenated normalised models
        scale = model.scale
        inputs = (x * scale[None, :, None]).reshape(len(x), -1)
    with torch.no_grad():
        codes, recon, out = model.encode(x), model(x), sae(inputs)
        torch.testing.assert_close(sae.encode(inputs), codes, rtol=1e-4, atol=1e-5)
        theirs = out if n_models == 1 else out.view(len(x), 2, -1) / scale[None, :, None]
        torch.testing.assert_close(theirs, recon, rtol=1e-4, atol=1e-4)
        norms = sae.W_dec.norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms))
        if architecture != "topk":  # SAELens folds a TopK only with decoder-norm rescaling
            sae.fold_W_dec_norm()
            torch.testing.assert_close(sae(inputs), out, rtol=1e-5, atol=1e-5)
    raw = {"metadata": {"sae_lens_version": SAELENS_VERSION}, "architecture": "topk"}
    assert handle_config_defaulting(dict(raw)) == raw  # 6.x: no pre-6.0 rewriting
