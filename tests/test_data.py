import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resnetlab.config import AugmentConfig, load_config
from resnetlab.data import build_data
from resnetlab.data.augment import BatchAugment, crop_flip, flip_sides, make_generator
from resnetlab.data.decode import mean_std
from resnetlab.data.images import load_array
from resnetlab.data.loader import CachedLoader, batch_slices
from resnetlab.errors import UserError
from tests.conftest import tiny_config, write_class_folders


def test_class_folders_with_splits(class_folders, tmp_path):
    data = build_data(tiny_config(class_folders, tmp_path))
    assert data.classes == ["ant", "bee", "cat"]
    assert set(data.splits) == {"train", "test"}
    train = data.splits["train"]
    assert train.images.shape == (36, 3, 16, 16) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0] * 12 + [1] * 12 + [2] * 12
    assert data.channels == 3 and data.image_size == 16
    assert len(data.mean) == 3 and all(0 < s < 1 for s in data.std)


def test_val_fraction_is_stratified_seeded_and_reusable(single_folder, tmp_path):
    from resnetlab.data.readers.manifest import split_file_text

    cfg = tiny_config(single_folder, tmp_path, "data.val_fraction=0.25")
    a, b = build_data(cfg), build_data(cfg)
    assert a.splits["val"].paths == b.splits["val"].paths and len(a.splits["val"]) == 15  # 5 of each class's 20
    assert torch.bincount(a.splits["val"].labels).tolist() == [5, 5, 5]
    assert len(a.splits["train"]) == 45
    other = build_data(tiny_config(single_folder, tmp_path, "data.val_fraction=0.25", "seed=7"))
    assert other.splits["val"].paths != a.splits["val"].paths
    saved = tmp_path / "split.csv"
    saved.write_text(split_file_text(a.catalog))
    again = build_data(tiny_config(single_folder, tmp_path, "seed=7"), split_file=saved)
    assert again.splits["val"].paths == a.splits["val"].paths  # the saved split wins over seed and fraction
    assert torch.equal(again.splits["train"].images, a.splits["train"].images)


def test_idx_gz_and_raw(idx_folder, tmp_path):
    data = build_data(tiny_config(idx_folder, tmp_path))
    assert data.channels == 1 and data.image_size == 12
    assert data.splits["train"].images.shape == (60, 1, 12, 12)
    assert data.splits["test"].images.shape == (20, 1, 12, 12)
    assert data.classes == ["0", "1", "2", "3"]


def test_idx_truncated_file(idx_folder, tmp_path):
    path = idx_folder / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError, match="truncated or padded"):
        build_data(tiny_config(idx_folder, tmp_path))


def test_cifar_python_format(cifar_folder, tmp_path):
    data = build_data(tiny_config(cifar_folder, tmp_path))
    assert data.classes[0] == "airplane" and len(data.classes) == 10
    assert data.splits["train"].images.shape == (50, 3, 32, 32)
    assert data.splits["test"].images.shape == (10, 3, 32, 32)


def test_cifar_pickle_cannot_run_code(cifar_folder, tmp_path):
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(cifar_folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(UserError, match="posix.system|os.system|not allowed"):
        build_data(tiny_config(cifar_folder, tmp_path))


def _odd_images(folder):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    Image.fromarray(np.dstack([rgb, np.full((16, 16), 128, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray((rng.integers(0, 65535, (16, 16))).astype(np.uint16)).save(folder / "grey16.png")
    Image.fromarray(rgb[:, :, 0]).save(folder / "grey.png")


def test_every_mode_becomes_rgb(tmp_path):
    _odd_images(tmp_path)
    for name in ("cmyk.jpg", "palette.png", "rgba.png", "grey16.png", "grey.png"):
        arr, _ = load_array(tmp_path / name, 16, "squash")
        assert arr.shape == (16, 16, 3) and arr.dtype == np.uint8, name
    img = Image.open(tmp_path / "grey16.png")
    assert img.mode.startswith("I")
    arr, grey = load_array(tmp_path / "grey16.png", 0, "squash")
    expected = np.asarray(img, dtype=np.float64) / 65535 * 255
    assert grey and np.abs(arr[:, :, 0] - expected).max() <= 1  # scaled, not clipped at 255


def _bad_files(folder):
    good = folder / "ok.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(good)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a picture")
    full = (folder / "ok.png").read_bytes()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / "big.jpg")
    (folder / "truncated.jpg").write_bytes((folder / "big.jpg").read_bytes()[:300])
    (folder / "big.jpg").unlink()
    return full


def test_bad_images_skip_and_fail(class_folders, tmp_path):
    _bad_files(class_folders / "train" / "bee")
    cfg = tiny_config(class_folders, tmp_path)
    data = build_data(cfg)
    reasons = {p.rsplit("/", 1)[-1]: r for p, r in data.skipped}
    assert set(reasons) == {"empty.jpg", "text.jpg", "truncated.jpg"}
    assert "empty" in reasons["empty.jpg"] and "not an image" in reasons["text.jpg"]
    assert len(data.splits["train"]) == 37  # 36 + ok.png
    with pytest.raises(UserError, match=r"bad image .*(empty|text|truncated)\.jpg"):
        build_data(tiny_config(class_folders, tmp_path, "data.on_bad_image=fail"))


def test_folder_errors(tmp_path):
    root = write_class_folders(tmp_path / "d")
    (root / "train" / "dog").mkdir()
    with pytest.raises(UserError, match=r"class folder .*dog has no images"):
        build_data(tiny_config(root, tmp_path))
    (root / "train" / "dog").rmdir()
    (root / "test" / "emu").mkdir()
    with pytest.raises(UserError, match="class folder 'emu' that .* lacks"):
        build_data(tiny_config(root, tmp_path))
    with pytest.raises(UserError, match="neither a folder or CSV that exists nor a known name"):
        build_data(tiny_config(tmp_path / "nowhere", tmp_path))


def test_mixed_sizes_need_image_size(tmp_path):
    root = write_class_folders(tmp_path / "d", splits=("",))
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "ant" / "wide.png")
    with pytest.raises(UserError, match="set data.image_size=N"):
        build_data(tiny_config(root, tmp_path))
    data = build_data(tiny_config(root, tmp_path, "data.image_size=8"))
    assert data.splits["train"].images.shape[-2:] == (8, 8)


def test_grey_folder_keeps_one_channel(tmp_path):
    root = write_class_folders(tmp_path / "d", splits=("",))
    for p in root.rglob("*.png"):
        Image.open(p).convert("L").save(p)
    assert build_data(tiny_config(root, tmp_path)).channels == 1
    assert build_data(tiny_config(root, tmp_path, "data.channels=3")).channels == 3


def test_streaming_matches_cache_without_augmentation(class_folders, tmp_path):
    cached = build_data(tiny_config(class_folders, tmp_path, "data.image_size=16"))
    streamed = build_data(tiny_config(class_folders, tmp_path, "data.image_size=16", "data.cache=stream"))
    assert not streamed.cached and streamed.splits["train"].images is None
    from resnetlab.train.session import make_loader

    cfg = tiny_config(class_folders, tmp_path, "data.image_size=16", "data.cache=stream", "data.num_workers=0")
    loader = make_loader(streamed.splits["test"], streamed, cfg, torch.device("cpu"), train=False)
    x = torch.cat([b[0] for b in loader.epoch(0)])
    assert torch.equal(x, cached.splits["test"].images)


def test_a_smoke_tests_share_of_a_split_is_spread_over_it_not_its_first_class():
    from resnetlab.data.bundle import Split

    labels = torch.arange(3).repeat_interleave(10)  # a folder's split: in class order
    split = Split(labels, images=torch.arange(30).view(30, 1, 1, 1).to(torch.uint8),
                  paths=[f"{i}.png" for i in range(30)], boxes=np.arange(30 * 4).reshape(30, 4))
    part = split.spread(6)
    assert part.labels.tolist() == [0, 0, 1, 1, 2, 2] and part.images.flatten().tolist() == [0, 6, 12, 17, 23, 29]
    assert part.paths == ["0.png", "6.png", "12.png", "17.png", "23.png", "29.png"] and part.boxes[-1, 0] == 29 * 4
    assert split.spread(30) is split and split.spread(100) is split


def test_mean_std_agrees_with_numpy_in_parts_of_any_size():
    images = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (37, 3, 5, 7), dtype=np.uint8))
    x = images.numpy().astype(np.float64) / 255
    for elements in (2**22, 100):  # one part, or 37 parts of one image
        mean, std = mean_std(images, elements=elements)
        assert mean == [round(v, 6) for v in x.mean((0, 2, 3))]
        assert std == pytest.approx(x.std((0, 2, 3)), abs=1e-6)


def test_crop_flip_matches_reflect_pad_reference():
    torch.manual_seed(0)
    x = torch.randint(0, 255, (6, 3, 10, 10), dtype=torch.uint8)
    cfg = AugmentConfig(crop_padding=3, hflip=True)
    out = crop_flip(x, cfg, make_generator(1, 2, 3))
    g = make_generator(1, 2, 3)  # same draws, done the slow way
    dy = torch.randint(0, 7, (6, 1), generator=g) - 3
    dx = torch.randint(0, 7, (6, 1), generator=g) - 3
    flip = torch.rand(6, generator=g) < 0.5
    padded = F.pad(x.float(), (3, 3, 3, 3), mode="reflect")
    for i in range(6):
        ref = padded[i, :, 3 + dy[i, 0] : 13 + dy[i, 0], 3 + dx[i, 0] : 13 + dx[i, 0]]
        ref = ref.flip(-1) if flip[i] else ref
        assert torch.equal(out[i].float(), ref)
    assert torch.equal(crop_flip(x, AugmentConfig(crop_padding=0, hflip=False), g), x)


def _sides_shown(loader, images, epoch):
    """{image: mirrored?} over one epoch of a loader whose labels are the images' positions."""
    shown = {}
    for x, y in loader.epoch(epoch):
        for xi, i in zip(x, y.tolist()):
            assert torch.equal(xi, images[i]) or torch.equal(xi, images[i].flip(-1))
            shown[i] = torch.equal(xi, images[i].flip(-1))
    return shown


def test_alternating_flip_shows_each_image_the_other_side_each_epoch():
    n = 40
    # each row a left-to-right ramp, offset by the image's position: mirrored and not are told apart
    images = (torch.arange(4).view(1, 1, 1, 4) + 5 * torch.arange(n).view(n, 1, 1, 1)).expand(n, 1, 3, 4)
    images, labels = images.to(torch.uint8).contiguous(), torch.arange(n)

    def loader(alternate):
        cfg = AugmentConfig(crop_padding=0, hflip=True, hflip_alternate=alternate)
        augment = BatchAugment(cfg, num_classes=n, sides=flip_sides(n, seed=5) if alternate else None)
        return CachedLoader(images, labels, batch_size=6, device=torch.device("cpu"), seed=5, shuffle=True,
                            augment=augment, tail="merge")

    shown = [_sides_shown(loader(True), images, e) for e in range(4)]
    assert all(shown[e][i] != shown[e + 1][i] for e in range(3) for i in range(n))
    assert 10 < sum(shown[0].values()) < 30  # a random half mirrored first
    coin = [_sides_shown(loader(False), images, e) for e in range(2)]
    assert any(coin[0][i] == coin[1][i] for i in range(n))  # coin flips repeat a side: the random path kept
    with pytest.raises(UserError, match="^augment.hflip=false, but augment.hflip_alternate=true needs flips: also "
                                        "set augment.hflip_alternate=false, or keep augment.hflip=true$"):
        load_config(None, ["augment.hflip=false", "augment.hflip_alternate=true"])


def test_turning_flips_off_names_every_setting_that_needs_them_in_one_line():
    """cifar10-fast alternates flips and scores 6 fixed views: hflip=false names both, and its fix loads."""
    with pytest.raises(UserError, match=r"^augment.hflip=false, but augment.hflip_alternate=true and "
                                        r"train.final_tta=6 \(fixed views\) need flips: also set augment."
                                        r"hflip_alternate=false train.final_tta=3, or keep augment.hflip=true$"):
        load_config("cifar10-fast", ["augment.hflip=false"])
    cfg = load_config("cifar10-fast", ["augment.hflip=false", "augment.hflip_alternate=false", "train.final_tta=3"])
    assert (cfg.augment.hflip, cfg.train.final_tta) == (False, 3)


def test_loader_is_a_function_of_seed_and_epoch():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 4, 4).contiguous()
    labels = torch.arange(10)
    loader = CachedLoader(images, labels, batch_size=3, device=torch.device("cpu"), seed=5, shuffle=True,
                          augment=BatchAugment(AugmentConfig(crop_padding=1), num_classes=10), tail="merge")
    assert len(loader) == 3 and [loader.global_batch(i) for i in range(3)] == [3, 3, 4]  # tail joins
    first = [y.tolist() for _, y in loader.epoch(4)]
    assert first == [y.tolist() for _, y in loader.epoch(4)]
    assert [y.tolist() for _, y in loader.epoch(4, start=1)] == first[1:]
    assert sorted(sum(first, [])) == list(range(10))  # every image once an epoch
    assert first != [y.tolist() for _, y in loader.epoch(5)]


def test_drop_last_keeps_one_batch_shape_and_drops_other_images_each_epoch():
    """train.drop_last: every batch full; the images left out change with the shuffle, so all are seen."""
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 4, 4).contiguous()
    loader = CachedLoader(images, torch.arange(10), batch_size=3, device=torch.device("cpu"), seed=5, shuffle=True,
                          augment=BatchAugment(AugmentConfig(crop_padding=1), num_classes=10), tail="drop")
    assert len(loader) == loader.full_steps == 3 and [loader.global_batch(i) for i in range(3)] == [3, 3, 3]
    epochs = [[y.tolist() for _, y in loader.epoch(e)] for e in range(6)]
    assert all(len(b) == 3 for batches in epochs for b in batches)
    dropped = [set(range(10)) - set(sum(batches, [])) for batches in epochs]
    assert all(len(d) == 1 for d in dropped) and len(set.union(*dropped)) > 1  # one a time, not always the same
    assert [y.tolist() for _, y in loader.epoch(4, start=1)] == epochs[4][1:]  # a resume sees the same steps
    assert batch_slices(2, 3, "drop") == [slice(0, 2)]  # a split under one batch: nothing is dropped
    assert batch_slices(9, 3, "drop") == batch_slices(9, 3, "merge") == batch_slices(9, 3, "keep")
    assert batch_slices(10, 3, "keep")[-1] == slice(9, 10) and batch_slices(10, 3, "merge")[-1] == slice(6, 10)


def test_real_cifar10_jpeg_subset(shared_data, tmp_path):
    data = build_data(tiny_config(shared_data / "cifar10-jpeg", tmp_path))
    assert len(data.classes) == 10 and data.classes[0] == "airplane"
    assert data.splits["train"].images.shape == (2000, 3, 32, 32)
    assert data.splits["test"].images.shape == (1000, 3, 32, 32)
    json.dumps(data.preprocess())


def test_streaming_augmentation_is_deterministic_across_workers(class_folders, tmp_path):
    from resnetlab.train.session import make_loader

    batches = {}
    for workers in (0, 2):
        cfg = tiny_config(class_folders, tmp_path, "data.cache=stream", "data.image_size=16",
                          "augment.crop_padding=3", f"data.num_workers={workers}")
        data = build_data(cfg)
        loader = make_loader(data.splits["train"], data, cfg, torch.device("cpu"), train=True)
        batches[workers] = [(x.clone(), y.clone()) for x, y in loader.epoch(1, start=1)]
    assert [len(y) for _, y in batches[0]] == [8, 8, 12]  # 36 images, batch 8, tail merged, from step 1
    for (x0, y0), (x2, y2) in zip(batches[0], batches[2]):
        assert x0.shape[1:] == (3, 16, 16) and x0.dtype == torch.uint8
        assert torch.equal(x0, x2) and torch.equal(y0, y2)


def test_fashion_mnist_by_name_from_debian(tmp_path):
    from resnetlab.data.readers import builtin

    if not (builtin.Path(builtin.BUILTIN["fashion-mnist"].system) / "t10k-labels-idx1-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make test installs it)")
    data = build_data(tiny_config("fashion-mnist", tmp_path))
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    assert data.splits["train"].images.shape == (60000, 1, 28, 28)
    assert torch.bincount(data.splits["test"].labels).tolist() == [1000] * 10
    assert data.mean[0] == pytest.approx(0.286, abs=1e-3) and data.std[0] == pytest.approx(0.353, abs=1e-3)


def test_builtin_offline_names_where_to_put_files(tmp_path, monkeypatch):
    import urllib.error

    import torchvision

    from resnetlab.data.readers import builtin

    monkeypatch.setattr(builtin, "candidates", lambda name: [tmp_path / "none"])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(UserError,
                       match=r"cannot download cifar10 .*offline, put its files in .*cache/resnetlab/datasets/cifar10"):
        build_data(tiny_config("cifar10", tmp_path))


def test_streaming_bad_file_skip_and_fail(class_folders, tmp_path):
    from resnetlab.train.session import make_loader

    (class_folders / "train" / "ant" / "zz.jpg").write_text("not an image")
    for mode in ("skip", "fail"):
        cfg = tiny_config(class_folders, tmp_path, "data.cache=stream", "data.image_size=16",
                          "data.num_workers=0", f"data.on_bad_image={mode}")
        data = build_data(cfg)
        loader = make_loader(data.splits["train"], data, cfg, torch.device("cpu"), train=False)
        if mode == "skip":
            assert sum(len(y) for _, y in loader.epoch(0)) == 36
            assert list(loader.skipped) == [str(class_folders / "train" / "ant" / "zz.jpg")]
        else:
            with pytest.raises(UserError, match=r"bad image .*zz.jpg: not an image"):
                list(loader.epoch(0))


def test_generators_of_different_keys_draw_differently_even_with_trailing_zeros():
    """An epoch's order (seed, epoch) and its first step's augmentation (seed, epoch, 0) must not
    share a stream (numpy's SeedSequence alone reads [a, b] and [a, b, 0] as the same number)."""
    keys = [(0,), (0, 0), (0, 0, 0), (0, 3), (0, 3, 0), (1, 2, 3), (1, 2, 3, 0)]
    draws = {tuple(torch.rand(4, generator=make_generator(*k)).tolist()) for k in keys}
    assert len(draws) == len(keys)
    assert torch.equal(torch.rand(4, generator=make_generator(1, 2)), torch.rand(4, generator=make_generator(1, 2)))
