"""ImageNet initialization from a torchvision-format ResNet checkpoint (generated with the real key names
and shapes; no torchvision needed: torchvision's wheels do not import beside this torch). MONAI's plain ResNet-34,
built the torchvision way, is the independent network the layout and the loaded function are checked against."""

import pytest
import torch
from monai.networks.nets import resnet34
from torch import nn

from pedseg_core.config import build_config
from pedseg_core.errors import PedsegError
from pedseg_core.model.imagenet import init_encoder, load_torchvision_resnet
from pedseg_core.model.unet import MultiDomainUNet, build_model

TORCHVISION_RESNET34_KEYS = 218  # len(torchvision.models.resnet34().state_dict())


def torchvision_resnet_state(layers=(3, 4, 6, 3), seed=0) -> dict[str, torch.Tensor]:
    """The state dict layout of torchvision.models.resnet34 (BasicBlock, 1x1-conv+BN downsampling)."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def bn(prefix, c):
        state[f"{prefix}.weight"] = torch.rand(c, generator=g) + 0.5
        state[f"{prefix}.bias"] = torch.randn(c, generator=g)
        state[f"{prefix}.running_mean"] = torch.randn(c, generator=g)
        state[f"{prefix}.running_var"] = torch.rand(c, generator=g) + 0.5
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(1000)

    state["conv1.weight"] = torch.randn(64, 3, 7, 7, generator=g)
    bn("bn1", 64)
    in_planes = 64
    for stage, (blocks, planes) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            state[f"{p}.conv1.weight"] = torch.randn(planes, in_planes, 3, 3, generator=g)
            bn(f"{p}.bn1", planes)
            state[f"{p}.conv2.weight"] = torch.randn(planes, planes, 3, 3, generator=g)
            bn(f"{p}.bn2", planes)
            if b == 0 and stage > 1:
                state[f"{p}.downsample.0.weight"] = torch.randn(planes, in_planes, 1, 1, generator=g)
                bn(f"{p}.downsample.1", planes)
            in_planes = planes
    state["fc.weight"] = torch.randn(1000, 512, generator=g)
    state["fc.bias"] = torch.randn(1000, generator=g)
    return state


@pytest.fixture
def checkpoint(tmp_path):
    state = torchvision_resnet_state()
    assert len(state) == TORCHVISION_RESNET34_KEYS
    path = tmp_path / "resnet34-imagenet.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_every_encoder_tensor_is_loaded(checkpoint, norm):
    path, state = checkpoint
    cfg = build_config("small", overrides={"model": {"backbone": "resnet34", "norm": norm,
                                                     "encoder_weights": str(path)}})
    model = build_model([4, 3], cfg.model)
    own = model.encoder.state_dict()
    # the RGB stem is summed into one channel
    assert torch.allclose(own["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(own["layer3.0.downsample.0.weight"], state["layer3.0.downsample.0.weight"])
    for d in range(2):  # every domain's norm starts from the ImageNet BN
        assert torch.equal(own[f"layer2.1.bn2.norms.{d}.weight"], state["layer2.1.bn2.weight"])
        if norm == "batch":
            assert torch.equal(own[f"bn1.norms.{d}.running_var"], state["bn1.running_var"])


def torchvision_style_monai_resnet34() -> nn.Module:
    """MONAI's classifier ResNet-34 with torchvision's choices: stride-2 7x7 stem, 1x1 conv + BN shortcuts
    without bias, 3 input channels, 1000 classes."""
    return resnet34(spatial_dims=2, n_input_channels=3, num_classes=1000, conv1_t_stride=2, shortcut_type="B",
                    bias_downsample=False)


def test_the_generated_layout_is_a_library_resnet34_layout():
    """The generated checkpoint loads strictly (every key, every shape) into MONAI's own ResNet-34."""
    torchvision_style_monai_resnet34().load_state_dict(torchvision_resnet_state(), strict=True)


def well_scaled(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The random checkpoint with activations kept near 1 through 16 blocks: convolutions at variance
    1/fan_in, BN shifts and running means at 0.1 of the unit draws."""
    scaled = {}
    for key, value in state.items():
        if value.dim() == 4:
            value = value / value[0].numel() ** 0.5
        elif key.endswith(("bn1.bias", "bn2.bias", "downsample.1.bias", "running_mean")):
            value = value * 0.1
        scaled[key] = value
    return scaled


def test_the_loaded_encoder_computes_the_checkpoint_network():
    """After loading, pedseg's encoder on a grey slice gives the checkpoint network's ImageNet logits on the
    same slice repeated over RGB (eval mode: BN from the running statistics), so every tensor went to its place."""
    state = well_scaled(torchvision_resnet_state())
    reference = torchvision_style_monai_resnet34().eval()
    reference.load_state_dict(state)
    cfg = build_config("small", overrides={"model": {"backbone": "resnet34", "norm": "batch"}})
    model = MultiDomainUNet([4, 3], cfg.model).eval()
    load_torchvision_resnet(model.encoder, state, "test checkpoint")
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(x.repeat(1, 3, 1, 1))
        for domain in (0, 1):
            model.set_domain(domain)
            pooled = model.encoder(x)[-1].mean(dim=(2, 3))
            logits = nn.functional.linear(pooled, state["fc.weight"], state["fc.bias"])
            assert torch.allclose(logits, expected, rtol=1e-4, atol=1e-3)  # logits up to a few hundred


def test_counts_report_what_group_norm_cannot_use(checkpoint):
    path, _ = checkpoint
    cfg = build_config("small", overrides={"model": {"backbone": "resnet34", "norm": "group"}})
    model = MultiDomainUNet([4], cfg.model)
    counts = init_encoder(model.encoder, str(path))
    assert counts["tensors"] == TORCHVISION_RESNET34_KEYS - 2  # all but the classifier
    assert counts["skipped_for_group_norm"] == 36 * 3  # 36 BN layers x (mean, var, count), one domain


def test_wrong_architecture_is_refused(checkpoint, tmp_path):
    path, state = checkpoint
    cfg = build_config("small", overrides={"model": {"backbone": "resnet34"}})
    model = MultiDomainUNet([4], cfg.model)
    partial = {k: v for k, v in state.items() if not k.startswith("layer4.2.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(PedsegError, match="not in the checkpoint"):
        init_encoder(model.encoder, str(tmp_path / "partial.pth"))
    r18 = torchvision_resnet_state(layers=(2, 2, 2, 2))
    torch.save(r18, tmp_path / "r18.pth")
    with pytest.raises(PedsegError, match="not a matching"):
        init_encoder(model.encoder, str(tmp_path / "r18.pth"))


def test_unreadable_or_missing_file(tmp_path):
    model = MultiDomainUNet([4], build_config("tiny").model)
    with pytest.raises(PedsegError, match="not found"):
        init_encoder(model.encoder, str(tmp_path / "none.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PedsegError, match="cannot read ImageNet checkpoint"):
        init_encoder(model.encoder, str(tmp_path / "junk.pth"))


def test_training_starts_from_the_imagenet_checkpoint_end_to_end(checkpoint, write_dataset, tmp_path):
    """`pedseg train` with model.encoder_weights=<file>: the saved model's encoder is one Adam step away from
    the checkpoint (Adam moves each weight by at most about the learning rate per step)."""
    from pedseg_core.model.checkpoint import load_checkpoint
    from pedseg_core.train.centralized import train_centralized

    path, state = checkpoint
    cfg = build_config("tiny", overrides={
        "scheme": "full", "model": {"backbone": "resnet34", "decoder_channels": [32, 16, 16, 8, 8],
                                    "encoder_weights": str(path)},
        "train": {"epochs": 1, "steps_per_epoch": 1}, "data": {"augment": False}})
    data = {"a": write_dataset(shape=(40, 40, 4)), "b": write_dataset(shape=(40, 40, 4), seed=1)}
    train_centralized(data, cfg, tmp_path / "run", progress=False)
    model, _, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "final.pt")
    own = model.encoder.state_dict()
    lr = cfg.train.learning_rate
    for key in ("layer4.2.conv2.weight", "layer2.0.downsample.0.weight"):
        assert (own[key] - state[key]).abs().max() <= 1.5 * lr
    assert (own["conv1.weight"] - state["conv1.weight"].sum(1, keepdim=True)).abs().max() <= 1.5 * lr
