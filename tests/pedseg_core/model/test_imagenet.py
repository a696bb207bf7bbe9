"""ImageNet initialization from a torchvision-format ResNet checkpoint (generated with the real key names
and shapes; no torchvision needed)."""

import pytest
import torch

from pedseg_core.config import build_config
from pedseg_core.errors import PedsegError
from pedseg_core.model.imagenet import init_encoder
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
