"""The hashing models (ml/models/) and backbone weight loading (ml/pretrained.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from ml.models import (
    MODELS,
    PAPER_PRESETS,
    PRESETS,
    HybridHash,
    ModelSpec,
    TransHash,
    build_model,
    count_parameters,
    default_preset,
)
from ml.pretrained import PretrainedMismatchError, load_pretrained

SMALL_X = (3, 1, 28, 28)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny batches: one thread avoids OpenMP hand-offs that dominate (and stall on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _build(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelSpec(**kw)).eval()


def _x(seed: int = 1, shape: tuple[int, ...] = SMALL_X) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.backbone.forward_features(x)


# ---- shapes, determinism, gradients -------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_small_preset_emits_bits_deterministically_and_backprops(model):
    x = _x()
    for bits in (16, 48, 64):
        spec = ModelSpec(model=model, bits=bits)
        assert spec.img_size == 28 and spec.preset == default_preset(model) == "small"
        net = _build(model=model, bits=bits)
        assert net.spec == spec
        with torch.no_grad():
            u = net(x)
        assert u.shape == (3, bits) and u.dtype == torch.float32 and torch.isfinite(u).all()
    with torch.no_grad():
        again = _build(model=model, bits=64)(x)
    assert torch.equal(u, again)  # same seed -> same weights -> same output
    net.train()
    net(x).pow(2).mean().backward()
    no_grad = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters outside the graph: {no_grad[:5]}"


@pytest.mark.parametrize("model", MODELS)
def test_paper_presets_are_224px_and_paper_sized(model):
    sizes = {  # parameters at in_chans 3, 64 bits (meta device: nothing allocated)
        ("vts-cls", "vit-b16"): (85.8e6, 85.9e6),
        ("xhashnet", "deit-s"): (21.7e6, 21.8e6),
        ("transhash", "vit-b16"): (85.8e6, 85.9e6),
        ("hybridhash", "nest-b"): (55.5e6, 55.7e6),
    }
    for preset in PRESETS[model]:
        if preset.startswith("small"):
            continue
        spec = ModelSpec(model=model, preset=preset, in_chans=3)
        assert spec.img_size == 224
        with torch.device("meta"):
            net = build_model(spec)
        lo, hi = sizes.get((model, preset), (0, float("inf")))
        assert lo <= count_parameters(net) <= hi, (model, preset, count_parameters(net))
    assert default_preset(model, gpu=True) == PAPER_PRESETS[model] in PRESETS[model]


@pytest.mark.parametrize("model", MODELS)
def test_paper_presets_run_at_224_when_shrunk(model):
    preset = PAPER_PRESETS[model]
    if model == "hybridhash":  # keep the 224 px layout (patch 4, 14x14 blocks), shrink widths and depths
        shrink = {
            "embed_dims": [16, 32, 64],
            "num_heads": [1, 2, 4],
            "depths": [1, 1, 1],
            "interaction_heads": 4,
        }
    else:
        shrink = {"depth": 1}
    net = _build(model=model, preset=preset, bits=32, in_chans=3, overrides=shrink)
    with torch.no_grad():
        assert net(_x(shape=(1, 3, 224, 224))).shape == (1, 32)


# ---- specs and validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_spec_round_trips_through_json(model):
    override = {"hybridhash": {"depths": [1, 1]}, "transhash": {"groups": 2}}.get(model, {"depth": 2})
    spec = ModelSpec(model=model, bits=32, overrides=override, pretrained="file:///w.safetensors")
    back = ModelSpec(**json.loads(json.dumps(spec.to_dict())))
    assert back == spec and back.img_size == 28
    a, b = build_model(spec, load_pretrained=False), build_model(back, load_pretrained=False)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


def test_old_model_cards_still_load():
    card = {
        "model": "vts",
        "preset": "small",
        "bits": 64,
        "in_chans": 1,
        "num_classes": 10,
        "head_hidden": 1024,
        "head_dropout": 0.5,
        "drop_path_rate": 0.0,
        "overrides": {},
    }
    assert ModelSpec(**card).pretrained == "" and not ModelSpec(**card).flip_tta


def test_flip_tta_gives_an_image_and_its_mirror_one_code():
    import numpy as np

    from ml.encode import encode_images

    torch.manual_seed(0)
    images = np.random.default_rng(0).integers(0, 256, (6, 1, 28, 28), dtype=np.uint8)
    mirrored = np.ascontiguousarray(images[..., ::-1])
    plain = build_model(ModelSpec(bits=32, overrides={"depth": 1}))
    assert not np.array_equal(*(encode_images(plain, x, torch.device("cpu")) for x in (images, mirrored)))
    plain.spec.flip_tta = True  # same weights, codes from u(x) + u(mirror x)
    a, b = (encode_images(plain, x, torch.device("cpu")) for x in (images, mirrored))
    np.testing.assert_array_equal(a, b)


def test_unknown_names_are_rejected_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown model 'resnet'.*hybridhash"):
        build_model(ModelSpec(model="resnet"))
    with pytest.raises(ValueError, match=r"unknown preset 'vit-b16' for model 'xhashnet'.*deit-s"):
        build_model(ModelSpec(model="xhashnet", preset="vit-b16"))
    with pytest.raises(ValueError, match="unknown preset"):
        build_model(ModelSpec(preset="huge"))
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['widht'\].*embed_dim"):
        build_model(ModelSpec(overrides={"widht": 3}))
    with pytest.raises(ValueError, match="multiple of 8"):
        build_model(ModelSpec(bits=12))
    with pytest.raises(ValueError, match="multiple of 8"):
        build_model(ModelSpec(model="hybridhash", bits=12))
    with pytest.raises(ValueError, match="unknown model"):
        default_preset("resnet")


# ---- TransHash ---------------------------------------------------------------------------------------------


def test_transhash_rejects_bits_not_divisible_by_2k():
    with pytest.raises(ValueError, match=r"divisible by 2K.*B=16, K=3"):
        build_model(ModelSpec(model="transhash", bits=16, overrides={"groups": 3}))
    assert build_model(ModelSpec(model="transhash", bits=48, overrides={"groups": 3}))(_x()).shape == (3, 48)


@pytest.mark.parametrize(
    "groups,bits", [(4, 64), (7, 56)]
)  # 49 patches: uneven groups (looped) / 7 x 7 (batched)
def test_transhash_is_global_half_plus_k_local_branches(groups, bits):
    net = _build(model="transhash", bits=bits, overrides={"groups": groups})
    assert isinstance(net, TransHash)
    x = _x()
    bb, last = net.backbone, net.backbone.blocks[-1]
    with torch.no_grad():
        h = net.tokens_before_last_block(x)
        g, loc = net.branch_features(x)
        u = net(x)
        # reference: the last block on [cls; group_k] for contiguous raster-order groups, then the final norm
        chunks = torch.tensor_split(h[:, 1:], groups, dim=1)
        want = torch.stack([bb.norm(last(torch.cat([h[:, :1], c], 1))[:, 0]) for c in chunks], 1)
        assert [c.shape[1] for c in chunks] == ([13, 12, 12, 12] if groups == 4 else [7] * 7)
        torch.testing.assert_close(loc, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g, bb.norm(last(h)[:, 0]))
        torch.testing.assert_close(
            u, torch.cat([net.global_head(g)] + [hd(loc[:, k]) for k, hd in enumerate(net.local_heads)], 1)
        )
        # zeroing a branch's head zeroes exactly its slice of the code: B/2 global, then K x B/(2K)
        half, per = bits // 2, bits // (2 * groups)
        for head in (net.global_head, net.local_heads[1]):
            head.weight.zero_()
            head.bias.zero_()
        z = net(x)
    assert (z[:, :half] == 0).all() and (z[:, half + per : half + 2 * per] == 0).all()
    keep = torch.ones(bits, dtype=torch.bool)
    keep[:half] = keep[half + per : half + 2 * per] = False
    assert torch.equal(z[:, keep], u[:, keep]) and (u[:, ~keep] != 0).all()


# ---- HybridHash --------------------------------------------------------------------------------------------


def test_hybridhash_block_layout_small_and_nest_b():
    small = _build(model="hybridhash")
    assert small.stage_layout() == [
        dict(map_size=14, block_size=7, blocks=4),
        dict(map_size=7, block_size=7, blocks=1),
    ]
    with torch.device("meta"):
        nest_b = build_model(ModelSpec(model="hybridhash", preset="nest-b", in_chans=3))
    assert isinstance(nest_b, HybridHash)
    assert nest_b.stage_layout() == [
        dict(map_size=s, block_size=14, blocks=t) for s, t in ((56, 16), (28, 4), (14, 1))
    ]
    levels = nest_b.backbone.levels
    assert [lv.pos_embed.shape[1:3] for lv in levels] == [
        (16, 196),
        (4, 196),
        (1, 196),
    ]  # per-block pos embeds
    assert [len(lv.transformer_encoder) for lv in levels] == [2, 2, 15]
    # interaction modules: one block token per block of the previous stage; the hash layer pools to one token
    assert [tuple(levels[i].pool.global_attention.pos_embed.shape) for i in (1, 2)] == [
        (1, 16, 256),
        (1, 4, 512),
    ]
    assert tuple(nest_b.hash_layer.global_attention.pos_embed.shape) == (1, 1, 512)

    # the 4-D attention wrapper computes what timm's NesT attention computes
    layer = small.backbone.levels[0].transformer_encoder[0]
    nest = pytest.importorskip("ml.timm_compat").import_timm().models.nest
    ref = nest.Attention(48, num_heads=2, qkv_bias=True)
    ref.load_state_dict(layer.attn.state_dict())
    tokens = _x(shape=(3, 4, 49, 48))
    with torch.no_grad():
        torch.testing.assert_close(layer.attn(tokens), ref(tokens), rtol=1e-5, atol=1e-5)

    maps = []
    for lv in small.backbone.levels:
        lv.register_forward_hook(lambda _m, _i, out: maps.append(tuple(out.shape)))
    with torch.no_grad():
        small(_x())
    assert maps == [(3, 48, 14, 14), (3, 96, 7, 7)]


# ---- load_pretrained ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_pretrained_round_trip(tmp_path, model):
    src, dst = _build(0, model=model), _build(1, model=model)
    x = _x()
    want = _features(src, x)
    assert not torch.equal(want, _features(dst, x))
    state = {k: v.contiguous() for k, v in src.backbone.state_dict().items()}
    save_file(state, str(tmp_path / "backbone.safetensors"))
    torch.save(state, tmp_path / "backbone.pth")
    for name in ("backbone.safetensors", "backbone.pth"):
        with torch.no_grad():
            for p in dst.backbone.parameters():
                p.zero_()
        report = load_pretrained(dst, str(tmp_path / name))
        assert report.ok and sorted(report.loaded) == sorted(state)
        assert torch.equal(want, _features(dst, x)), name


def test_pretrained_from_file_uri_with_prefix_and_via_spec(tmp_path):
    src = _build(0, model="xhashnet")
    path = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))  # backbone.* and head.*
    dst = _build(1, model="xhashnet")
    load_pretrained(dst, f"file://{path}", prefix="backbone.")
    x = _x()
    assert torch.equal(_features(src, x), _features(dst, x))
    spec = ModelSpec(model="xhashnet", pretrained=f"file://{path}")
    with pytest.raises(PretrainedMismatchError, match="no tensor.*pass prefix='backbone.'"):
        build_model(spec)  # a full checkpoint is not a backbone state dict
    bb = tmp_path / "bb.safetensors"
    save_file({k: v.contiguous() for k, v in src.backbone.state_dict().items()}, str(bb))
    spec = ModelSpec(model="xhashnet", pretrained=f"file://{bb}")
    torch.manual_seed(2)
    assert torch.equal(_features(build_model(spec), x), _features(src, x))
    torch.manual_seed(2)
    assert not torch.equal(_features(build_model(spec, load_pretrained=False), x), _features(src, x))


def test_pretrained_mismatches_are_named(tmp_path):
    net = _build(model="vts-cls")
    state = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    del state["blocks.1.norm2.bias"]
    state["blocks.9.mlp.fc1.weight"] = torch.zeros(2, 2)
    state["blocks.0.attn.qkv.weight"] = state["blocks.0.attn.qkv.weight"][:, :10]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(PretrainedMismatchError) as err:
        load_pretrained(net, str(path))
    msg = str(err.value)
    for part in (
        "missing keys ['blocks.1.norm2.bias']",
        "unexpected keys ['blocks.9.mlp.fc1.weight']",
        "blocks.0.attn.qkv.weight: file [288, 10] vs model [288, 96]",
    ):
        assert part in msg, msg
    before = net.backbone.blocks[0].attn.qkv.weight.clone()
    report = load_pretrained(net, str(path), strict=False)
    assert report.missing == ["blocks.1.norm2.bias"] and report.unexpected == ["blocks.9.mlp.fc1.weight"]
    assert [m[0] for m in report.mismatched] == ["blocks.0.attn.qkv.weight"]
    assert torch.equal(net.backbone.blocks[0].attn.qkv.weight, before)  # mismatched tensors are left alone
    torch.save({"foo": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(PretrainedMismatchError, match="no tensor"):
        load_pretrained(net, str(tmp_path / "other.pt"), strict=False)
    with pytest.raises(ValueError, match="expected a .safetensors"):
        load_pretrained(net, str(tmp_path / "weights.npz"))


def test_pretrained_adapts_rgb_classifier_checkpoints(tmp_path):
    """An RGB ImageNet-style checkpoint (classifier head, 3 channels, another grid) loads into a 1-channel model."""
    torch.manual_seed(0)
    rgb = build_model(ModelSpec(model="vts-cls", in_chans=3, overrides={"img_size": 32})).backbone
    state = {k: v.contiguous() for k, v in rgb.state_dict().items()}
    state |= {"head.weight": torch.zeros(1000, 96), "head.bias": torch.zeros(1000)}
    path = tmp_path / "rgb.safetensors"
    save_file(state, str(path))
    net = _build(1, model="vts-cls")
    report = load_pretrained(net, str(path))
    assert report.ok and sorted(report.dropped) == ["head.bias", "head.weight"]
    assert sorted(report.adapted) == ["patch_embed.proj.weight", "pos_embed"]
    w = rgb.patch_embed.proj.weight
    torch.testing.assert_close(net.backbone.patch_embed.proj.weight, w.sum(1, keepdim=True))
    with pytest.raises(PretrainedMismatchError, match="shape mismatches.*patch_embed.proj.weight"):
        load_pretrained(net, str(path), adapt=False)


def test_hybridhash_loads_nest_weights_non_strict(tmp_path):
    """As the paper does from jx_nest_base: NesT keys load (ConvPool conv/norm included), the rest is reported."""
    timm = pytest.importorskip("ml.timm_compat").import_timm()
    torch.manual_seed(0)
    nest = timm.models.nest.Nest(
        img_size=28,
        in_chans=1,
        patch_size=2,
        num_levels=2,
        embed_dims=(48, 96),
        num_heads=(2, 4),
        depths=(1, 4),
        num_classes=10,
    )
    path = tmp_path / "nest.safetensors"
    save_file({k: v.contiguous() for k, v in nest.state_dict().items()}, str(path))
    net = _build(1, model="hybridhash")
    with pytest.raises(PretrainedMismatchError, match="missing keys.*conv_glo"):
        load_pretrained(net, str(path))
    report = load_pretrained(net, str(path), strict=False)
    assert sorted(report.unexpected) == sorted(
        f"levels.1.transformer_encoder.3.{k}"
        for k in (
            "norm1.weight",
            "norm1.bias",
            "attn.qkv.weight",
            "attn.qkv.bias",
            "attn.proj.weight",
            "attn.proj.bias",
            "norm2.weight",
            "norm2.bias",
            "mlp.fc1.weight",
            "mlp.fc1.bias",
            "mlp.fc2.weight",
            "mlp.fc2.bias",
        )
    )
    assert all(".pool.conv_glo." in k or ".pool.global_attention." in k for k in report.missing), (
        report.missing
    )
    assert torch.equal(net.backbone.levels[1].pool.conv.weight, nest.levels[1].pool.conv.weight)
    assert sorted(report.dropped) == ["head.bias", "head.weight"]


def test_conv_stem_preset_gives_one_token_per_cell_of_the_7px_map():
    net = build_model(ModelSpec(model="vts", preset="small-conv", bits=32, head_hidden=64))
    assert net.backbone.patch_embed.num_patches == 49
    with torch.no_grad():
        assert net(_x(shape=(2, 1, 28, 28))).shape == (2, 32)


def test_conv_stem_needs_patch_size_one():
    with pytest.raises(ValueError, match="conv stem of 2 stages needs patch_size 1"):
        build_model(ModelSpec(model="vts-cls", preset="small-conv", overrides={"patch_size": 2}))


@pytest.mark.parametrize("model", ["vts", "hybridhash"])
def test_models_are_built_channels_last_and_compute_what_a_contiguous_copy_does(model):
    net = _build(model=model, bits=32)
    convs = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    plain = _build(model=model, bits=32).to(memory_format=torch.contiguous_format)
    assert all(m.weight.is_contiguous() for m in plain.modules() if isinstance(m, torch.nn.Conv2d))
    x = _x(shape=(4, 1, net.spec.img_size, net.spec.img_size))
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", ["vts", "transhash", "hybridhash"])
def test_training_attention_unfuses_only_cpu_bf16_training_and_computes_the_same(model):
    from ml.device import training_attention

    net = _build(model=model, bits=32).train()
    attns = [m for m in net.modules() if hasattr(m, "fused_attn")]
    assert attns and all(m.fused_attn for m in attns)
    x = _x(shape=(4, 1, net.spec.img_size, net.spec.img_size))
    torch.manual_seed(0)
    fused = net(x)
    fused.square().sum().backward()
    fused_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    for device, amp in ((torch.device("cpu"), False), (torch.device("cuda"), True)):
        with training_attention(net, device, amp):
            assert all(m.fused_attn for m in attns)
    with training_attention(net, torch.device("cpu"), True):
        assert not any(m.fused_attn for m in attns)
        torch.manual_seed(0)
        plain = net(x)
        plain.square().sum().backward()
    assert all(m.fused_attn for m in attns)  # restored
    torch.testing.assert_close(plain, fused, rtol=1e-4, atol=1e-5)
    for p, g in zip(net.parameters(), fused_grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-3, atol=1e-5)
