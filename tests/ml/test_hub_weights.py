"""Pretrained backbones by timm name / hub id (ml/hub_weights.py), through timm's and huggingface_hub's real
loading code, offline, against a Hugging Face cache that the test writes; and by file path and file:// URI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ml.hub_weights import WeightsNotCachedError, create_pretrained, is_timm_name
from ml.models import ModelSpec, build_model
from ml.recipes import build_run
from ml.timm_compat import import_timm

NAME = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # timm resolves it to the hub repo timm/<NAME>
TINY_ARGS = {"img_size": 32, "depth": 2}  # a vit_tiny_patch16_224 of 4 patches and 2 blocks
SHA = "0123456789abcdef0123456789abcdef01234567"


def write_hub_repo(cache: Path, repo: str, state: dict, config: dict) -> None:
    """``repo`` in huggingface_hub's cache layout: refs/main -> snapshots/<sha>/{model.safetensors,config.json}."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snap = folder / "snapshots" / SHA
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(SHA)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))
    (snap / "config.json").write_text(json.dumps(config))


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _timm_model(seed: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return import_timm().create_model("vit_tiny_patch16_224", **kwargs)


def _backbone_equal(net: torch.nn.Module, src: torch.nn.Module) -> None:
    mine = net.backbone.state_dict()
    theirs = {k: v for k, v in src.state_dict().items() if not k.startswith("head.")}
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(mine[key], value), key


def test_timm_name_loads_from_the_hub_cache_offline(offline_cache):
    src = _timm_model(3)
    write_hub_repo(offline_cache, f"timm/{NAME}", src.state_dict(), {"architecture": "vit_tiny_patch16_224"})
    assert is_timm_name(NAME) and is_timm_name("hf-hub:timm/x") and not is_timm_name("w.safetensors")
    spec = ModelSpec(model="vts-cls", preset="transfer-vitt16", in_chans=3, bits=16, pretrained=NAME)
    _backbone_equal(build_model(spec), src)
    # the preset's own weights are that name: a run leaving --pretrained unset takes them, "none" does not
    run_spec, _ = build_run("quick", 10, 3, model="vts-cls", preset="transfer-vitt16", pretrained="")
    assert run_spec.pretrained == NAME
    assert (
        build_run("quick", 10, 3, model="vts-cls", preset="transfer-vitt16", pretrained="none")[0].pretrained
        == ""
    )
    assert build_run("quick", 10, 1, pretrained="")[0].pretrained == ""  # CPU presets: no weights


def test_hub_id_with_model_args_loads_offline(offline_cache):
    src = _timm_model(4, **TINY_ARGS, num_classes=5)
    config = {"architecture": "vit_tiny_patch16_224", "model_args": TINY_ARGS, "num_classes": 5}
    config["pretrained_cfg"] = {"input_size": [3, 32, 32], "num_classes": 5, "classifier": "head"}
    write_hub_repo(offline_cache, "acme/tiny-vit", src.state_dict(), config)
    loaded = create_pretrained("hf-hub:acme/tiny-vit")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in src.state_dict().items())
    spec = ModelSpec(
        model="vts-cls", preset="transfer-vitt16", in_chans=1, bits=16, overrides=TINY_ARGS,
        pretrained="hf-hub:acme/tiny-vit",
    )  # fmt: skip
    net = build_model(spec)  # grey input: timm's adapt_input_conv sums the RGB filters
    want = src.patch_embed.proj.weight.sum(1, keepdim=True)
    assert torch.allclose(net.backbone.patch_embed.proj.weight, want)
    assert torch.equal(net.backbone.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)


def test_absent_weights_offline_fail_in_one_line(offline_cache):
    with pytest.raises(WeightsNotCachedError) as err:
        create_pretrained(NAME)
    message = str(err.value)
    assert "\n" not in message
    assert f"weights for {NAME} are not in the Hugging Face cache at {offline_cache}" in message
    assert "HF_HUB_OFFLINE is set; run once online or pass a file" in message
    with pytest.raises(ValueError, match="not a file, an fsspec URI or a timm model name"):
        create_pretrained("no_such_model_xyz")
    with pytest.raises(ValueError, match="Invalid pretrained tag"):
        create_pretrained("vit_tiny_patch16_224.bogus")


@pytest.mark.parametrize("as_uri", [False, True])
def test_local_file_and_file_uri(tmp_path, offline_cache, as_uri):
    src = _timm_model(5, **TINY_ARGS)
    path = tmp_path / "w.safetensors"
    save_file(src.state_dict(), str(path))
    source = f"file://{path}" if as_uri else str(path)
    assert not is_timm_name(source)
    spec = ModelSpec(model="vts-cls", preset="transfer-vitt16", in_chans=3, bits=16, overrides=TINY_ARGS)
    spec.pretrained = source
    _backbone_equal(build_model(spec), src)
