"""The ViT: random initialisation, a local 3-channel checkpoint adapted to five channels (the
same loading path as a user's ImageNet checkpoint), and directories that are not a ViT."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig, ViTForImageClassification

from hpcray.pipelines.cellpainting.model import ModelError, build_model, forward


def test_random_init_takes_five_channels():
    model = build_model(4, 48, dropout=0.1, labels=["0", "0.5", "1", "2"])
    logits = forward(model, torch.rand(2, 5, 48, 48))
    assert logits.shape == (2, 4) and model.config.id2label[1] == "0.5"


def test_a_three_channel_checkpoint_is_adapted_to_five(tmp_path):
    config = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32,
                       num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       num_labels=10)
    pretrained = ViTForImageClassification(config)
    pretrained.save_pretrained(tmp_path / "vit3")
    model = build_model(4, 48, checkpoint=tmp_path / "vit3")
    old = pretrained.vit.embeddings.patch_embeddings.projection.weight
    new = model.vit.embeddings.patch_embeddings.projection.weight
    assert new.shape == (32, 5, 8, 8) and model.config.num_channels == 5
    # each new channel: the mean RGB filter scaled by 3/5, so a grey image responds the same
    assert torch.allclose(new[:, 2], old.mean(dim=1) * 3 / 5)
    grey3, grey5 = torch.full((1, 3, 32, 32), 0.5), torch.full((1, 5, 32, 32), 0.5)
    with torch.no_grad():
        a = pretrained.vit.embeddings.patch_embeddings(grey3)
        b = model.vit.embeddings.patch_embeddings(grey5)
    assert torch.allclose(a, b, atol=1e-5)
    mine = model.state_dict()
    kept = [k for k in pretrained.state_dict() if "projection" not in k and "classifier" not in k]
    assert len(kept) > 10 and all(torch.equal(mine[k], pretrained.state_dict()[k]) for k in kept)
    assert forward(model, torch.rand(1, 5, 48, 48)).shape == (1, 4)  # other size: interpolated


def test_a_checkpoint_that_is_not_a_vit_is_refused(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2)).save_pretrained(tmp_path / "gpt")
    with pytest.raises(ModelError, match="model type 'gpt2'; a ViT is needed"):
        build_model(4, 48, checkpoint=tmp_path / "gpt")
    with pytest.raises(ModelError, match="not a model checkpoint directory"):
        build_model(4, 48, checkpoint=tmp_path / "empty")
