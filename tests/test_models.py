import pytest
import torch
import torch.nn.functional as F
import torchvision

from resnetlab.errors import UserError
from resnetlab.models import get_model, list_models, model_entry
from tests.conftest import place_weights

# Small inputs keep the deep ones quick: the ImageNet stem reaches 1x1 at layer4 from 32 px,
# the small-image families 2x2 from 16 px; both still train.
SIZE = {"preact_resnet_tiny": 32, "resnet9": 16}


@pytest.mark.parametrize("name", list_models())
def test_builds_shapes_and_learns_at_the_default_settings(name):
    """Every registered model fits one batch with the optimiser the global defaults build (SGD,
    lr 0.1, momentum 0.9, nesterov, weight decay 5e-4): resnet9 without its 0.125 output scale
    diverged here, as it did to chance on CIFAR."""
    from resnetlab.config import load_config
    from resnetlab.models.whitening import fit_whitening, whitening_layer
    from resnetlab.train.session import build_optimizer

    torch.manual_seed(0)
    model = get_model(name, num_classes=3, in_chans=1 if name == "resnet9" else 3)
    size = SIZE.get(name, 32 if model_entry(name).family == "torchvision" else 16)
    x = torch.randn(4, model_in_chans(model), size, size)
    y = torch.tensor([0, 1, 2, 1])
    if (stem := whitening_layer(model)) is not None:  # fitted before training, as train/session.py does
        fit_whitening(stem, x)
    assert model(x).shape == (4, 3)
    opt = build_optimizer(model, load_config(None, [f"model.name={name}"]).optim)
    model.train()
    first = None
    for _ in range(12):
        loss = F.cross_entropy(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # train mode: batch statistics, as during the steps
        final = F.cross_entropy(model(x), y).item()
    assert final < 0.5 * first, (first, final)


def model_in_chans(model):
    from resnetlab.models.whitening import PatchWhitening

    first = next(m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, PatchWhitening)))
    return first.weight.shape[1]  # (out, in, k, k) for both


def test_preact_configurable_stages_and_filters():
    model = get_model("preact_resnet56", num_classes=10, stages=[1, 1], filters=[16, 32, 64])
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert len(model.blocks) == 2
    assert model.blocks[1].conv2.stride == (2, 2) and model.blocks[1].conv1.out_channels == 16
    with pytest.raises(UserError, match=r"len\(filters\) = len\(stages\) \+ 1"):
        get_model("preact_resnet56", num_classes=10, stages=[1, 1], filters=[16, 32])


def test_cifar_stem_keeps_resolution():
    model = get_model("cifar_resnet18", num_classes=10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model_entry("cifar_resnet50").default_size == 32


def test_registry_errors():
    with pytest.raises(UserError, match="did you mean 'resnet34'"):
        get_model("resnet344", num_classes=10)
    with pytest.raises(UserError, match="has no option 'stages'"):
        get_model("resnet18", num_classes=10, stages=[1, 1])
    with pytest.raises(UserError, match="has no pretrained weights"):
        get_model("cifar_resnet18", num_classes=10, weights="IMAGENET1K_V1")


def test_pretrained_enum_loads_from_torchvision_cache(torch_home):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(num_classes=1000)
    place_weights(torch_home, "resnet18", "IMAGENET1K_V1", reference.state_dict())
    model = get_model("resnet18", num_classes=5, weights="IMAGENET1K_V1")
    assert torch.equal(model.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert model.fc.out_features == 5
    grey = get_model("resnet18", num_classes=5, in_chans=1, weights="ResNet18_Weights.IMAGENET1K_V1")
    assert torch.allclose(grey.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))


def test_mismatched_weights_file_is_refused(torch_home):
    place_weights(torch_home, "resnet18", "IMAGENET1K_V1", torchvision.models.resnet34().state_dict())
    with pytest.raises(UserError, match="does not fit resnet18"):
        get_model("resnet18", num_classes=5, weights="IMAGENET1K_V1")


def test_offline_and_not_cached_names_the_file(torch_home, monkeypatch):
    import urllib.error

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError, match=r"put resnet34-b627a593.pth .* at .*checkpoints"):
        get_model("resnet34", num_classes=5, weights="IMAGENET1K_V1")


def test_weights_name_errors():
    with pytest.raises(UserError, match="has no weights 'IMAGENET9'"):
        get_model("resnet18", num_classes=5, weights="IMAGENET9")
    with pytest.raises(UserError, match="are not for resnet18"):
        get_model("resnet18", num_classes=5, weights="ResNet50_Weights.IMAGENET1K_V1")


def test_local_weights_file(tmp_path):
    from safetensors.torch import save_file

    reference = torchvision.models.resnet18(num_classes=7)
    path = tmp_path / "w.safetensors"
    save_file(reference.state_dict(), str(path))
    model = get_model("resnet18", num_classes=7, weights=str(path))
    assert torch.equal(model.fc.weight, reference.fc.weight)


def test_resnet9_at_default_settings_does_not_blow_up():
    """Full-width resnet9, 10 classes, 32 images of 32 px, the default SGD (lr 0.1): with unscaled
    logits the loss jumped from 5.7 to 140-290 within 5 steps (the CIFAR run that ended at chance);
    with Page's 0.125 output scale it falls every step."""
    from resnetlab.config import load_config
    from resnetlab.train.session import build_optimizer

    torch.manual_seed(0)
    model = get_model("resnet9", num_classes=10)
    opt = build_optimizer(model, load_config(None, ["model.name=resnet9"]).optim)
    x, y = torch.randn(32, 3, 32, 32), torch.arange(32) % 10
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert max(losses) <= losses[0] and losses[-1] < 0.5 * losses[0], losses


def _bn_input_sizes(model, x):
    sizes = []
    hooks = [m.register_forward_hook(lambda m, inp, out: sizes.append(inp[0].shape[-1]))
             for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    model(x)
    for h in hooks:
        h.remove()
    return sizes


def test_resnet9_pool_first_normalises_pooled_maps_and_agrees_in_eval():
    """resnet9_pool_first's 3 downsampling layers run BN on the pooled map (a quarter of the pixels).
    With the same weights, in eval mode, and BN weights >= 0, its logits equal resnet9's: BN+ReLU is a
    non-decreasing map per channel, so it commutes with the max."""
    torch.manual_seed(0)
    kw = dict(num_classes=5, in_chans=1, filters=[8, 16, 16, 32])
    plain, pool_first = get_model("resnet9", **kw), get_model("resnet9_pool_first", **kw)
    x = torch.randn(3, 1, 16, 16)
    assert _bn_input_sizes(plain, x) == [16, 16, 8, 8, 8, 4, 2, 2]
    assert _bn_input_sizes(pool_first, x) == [16, 8, 8, 8, 4, 2, 2, 2]
    with torch.no_grad():
        for m in plain.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
    # the same tensors in the same order: only the pool's place differs
    pool_first.load_state_dict(dict(zip(pool_first.state_dict(), plain.state_dict().values())))
    plain.eval(), pool_first.eval()
    assert torch.allclose(pool_first(x), plain(x), atol=1e-5)


@pytest.mark.parametrize("channels", [8, 16])
def test_narrow_batchnorm_trains_like_batchnorm_and_takes_nchw_below_16_channels(channels):
    """resnet9's BatchNorm below 16 channels trains on an NCHW copy of a channels-last CPU input (PyTorch's
    channels-last kernel is ~7x slower there): the same output, gradients and running statistics as
    nn.BatchNorm2d, the output still channels-last, and the same state_dict keys."""
    from resnetlab.models.small_resnet import NarrowBatchNorm2d

    torch.manual_seed(0)
    plain, narrow = torch.nn.BatchNorm2d(channels), NarrowBatchNorm2d(channels)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5), plain.bias.uniform_(-0.5, 0.5)
    narrow.load_state_dict(plain.state_dict())
    x = torch.randn(16, channels, 12, 12).contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(x)
    outs = []
    for bn in (plain, narrow):
        xi = x.clone().requires_grad_(True)
        y = bn(xi)
        y.backward(g)
        outs.append((y, xi.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    y = outs[1][0]
    assert y.is_contiguous(memory_format=torch.channels_last)
    # below 16 channels the graph ends in the copy back to channels-last; at 16, in BatchNorm itself
    assert ("BatchNorm" not in y.grad_fn.name()) == (channels < 16), y.grad_fn.name()
    assert list(narrow.state_dict()) == list(plain.state_dict())
    narrow.eval()
    assert "BatchNorm" in narrow(x).grad_fn.name()  # eval (and export) is nn.BatchNorm2d's own path
    assert any(isinstance(m, NarrowBatchNorm2d) for m in get_model("resnet9_pool_first", num_classes=2).modules())
