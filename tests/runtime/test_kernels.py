"""Kernels: forward against plain NumPy definitions and onnxruntime, backward against central
finite differences in float64, the float32 path, and thread-count independence.

The reference definitions below loop over output positions on tiny shapes: slow, but each line
reads like the definition it checks.
"""

from __future__ import annotations

import math
import threading
from dataclasses import fields, replace

import numpy as np
import onnxruntime as ort
import pytest
from alexc_runtime.kernels import KERNELS, KernelContext, Memory, base
from alexc_runtime.threads import ShardPool, split_range
from onnx import TensorProto, helper

CTX = KernelContext()


def forward(op, attrs, *inputs, ctx=CTX):
    return KERNELS[op].forward(ctx, attrs, *inputs)


def conv_attrs(
    filters, kernel, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), groups=1, bias=True
):
    return dict(
        filters=filters,
        kernel=kernel,
        stride=stride,
        pad=pad,
        dilation=dilation,
        groups=groups,
        bias=bias,
    )


def pool_attrs(kernel, stride, pad=(0, 0, 0, 0), ceil_mode=False, **extra):
    return dict(kernel=kernel, stride=stride, pad=pad, ceil_mode=ceil_mode, **extra)


def lrn_attrs(size=5, alpha=1e-4, beta=0.75, bias=2.0, convention="paper"):
    return dict(size=size, alpha=alpha, beta=beta, bias=bias, convention=convention)


def train_ctx(seed):
    return KernelContext(train=True, rng=np.random.default_rng(seed))


def distinct(rng, shape):
    """Values pairwise at least 1/size apart: max pooling has no (near-)ties, FD stays valid."""
    n = math.prod(shape)
    return (rng.permutation(n).reshape(shape) - n / 2) / n * 4.0


# -- plain NumPy reference definitions ---------------------------------------------------------


def ref_conv(x, w, b, stride, pad, dilation, groups):
    n, c, h, wd = x.shape
    f, cg, kh, kw = w.shape
    top, left, bottom, right = pad
    xp = np.zeros((n, c, h + top + bottom, wd + left + right))
    xp[:, :, top : top + h, left : left + wd] = x
    ekh, ekw = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    oh = (xp.shape[2] - ekh) // stride[0] + 1
    ow = (xp.shape[3] - ekw) // stride[1] + 1
    y = np.zeros((n, f, oh, ow))
    fg = f // groups
    for o in range(f):
        chans = slice(o // fg * cg, o // fg * cg + cg)
        for i in range(oh):
            for j in range(ow):
                r0, c0 = i * stride[0], j * stride[1]
                patch = xp[:, chans, r0 : r0 + ekh : dilation[0], c0 : c0 + ekw : dilation[1]]
                y[:, o, i, j] = (patch * w[o]).sum(axis=(1, 2, 3)) + (0 if b is None else b[o])
    return y


def window_starts(size, kernel, stride, pad0, pad1, ceil_mode):
    """Starts (padded coordinates) of the windows a pool sweeps, enumerated one by one."""
    starts, start = [], 0
    while True:
        fits = start + kernel <= size + pad0 + pad1
        overhangs = ceil_mode and start < size + pad0 + pad1 - kernel + stride
        if not (fits or overhangs) or start >= size + pad0:
            return starts
        starts.append(start)
        start += stride


def ref_pool(x, kernel, stride, pad, ceil_mode, mode, count_include_pad=False):
    """mode 'max' returns (y, first-argmax flat index into each sample-channel plane)."""
    n, c, h, w = x.shape
    top, left, bottom, right = pad
    rows = window_starts(h, kernel[0], stride[0], top, bottom, ceil_mode)
    cols = window_starts(w, kernel[1], stride[1], left, right, ceil_mode)
    y = np.zeros((n, c, len(rows), len(cols)))
    where = np.zeros(y.shape, dtype=int)
    for i, r in enumerate(rows):
        for j, q in enumerate(cols):
            r0, r1 = max(r - top, 0), min(r - top + kernel[0], h)
            c0, c1 = max(q - left, 0), min(q - left + kernel[1], w)
            patch = x[:, :, r0:r1, c0:c1].reshape(n, c, -1)
            if mode == "max":
                first = patch.argmax(axis=2)  # argmax returns the first maximum
                y[:, :, i, j] = patch.max(axis=2)
                where[:, :, i, j] = (r0 + first // (c1 - c0)) * w + c0 + first % (c1 - c0)
            else:
                if count_include_pad:
                    hp, wp = h + top + bottom, w + left + right
                    area = (min(r + kernel[0], hp) - r) * (min(q + kernel[1], wp) - q)
                else:
                    area = (r1 - r0) * (c1 - c0)
                y[:, :, i, j] = patch.sum(axis=2) / area
    return (y, where) if mode == "max" else y


def ref_maxpool_grad(x_shape, where, dy):
    n, c, h, w = x_shape
    dx = np.zeros((n, c, h * w))
    for idx in np.ndindex(*dy.shape):
        dx[idx[0], idx[1], where[idx]] += dy[idx]
    return dx.reshape(x_shape)


def ref_adaptive(x, out):
    n, c, h, w = x.shape
    y = np.zeros((n, c) + tuple(out))
    for i in range(out[0]):
        r0, r1 = math.floor(i * h / out[0]), math.ceil((i + 1) * h / out[0])
        for j in range(out[1]):
            c0, c1 = math.floor(j * w / out[1]), math.ceil((j + 1) * w / out[1])
            y[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return y


def ref_lrn(x, size, alpha, beta, k, convention):
    a = alpha if convention == "paper" else alpha / size
    half = (size - 1) // 2
    y = np.zeros_like(x, dtype=np.float64)
    for ch in range(x.shape[1]):
        lo, hi = max(0, ch - half), min(x.shape[1] - 1, ch + half)
        s = k + a * (x[:, lo : hi + 1].astype(np.float64) ** 2).sum(axis=1)
        y[:, ch] = x[:, ch] / s**beta
    return y


def ref_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def ref_cross_entropy(logits, labels, smoothing):
    n, k = logits.shape
    total = 0.0
    for i in range(n):
        log_p = np.log(ref_softmax(logits[i], 0))
        target = np.full(k, smoothing / k)
        target[labels[i]] += 1 - smoothing
        total -= (target * log_p).sum()
    return total / n


# -- onnxruntime oracle ----------------------------------------------------------------------


def ort_run(op_type, inputs, **attrs):
    """Run a one-node ONNX model (opset 17, IR 8) on float32 inputs with onnxruntime."""
    names = [f"in{i}" for i in range(len(inputs))]
    graph = helper.make_graph(
        [helper.make_node(op_type, names, ["y"], **attrs)],
        "one_node",
        [
            helper.make_tensor_value_info(nm, TensorProto.FLOAT, list(a.shape))
            for nm, a in zip(names, inputs, strict=True)
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # onnx's static shape guess ignores the ceil_mode rule
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, dict(zip(names, inputs, strict=True)))[0]


def assert_close32(actual, expected, rtol=1e-5):
    assert actual.dtype == np.float32
    assert actual.shape == expected.shape
    scale = np.abs(expected).max()
    assert np.abs(actual - expected).max() <= rtol * scale


# -- finite differences ----------------------------------------------------------------------


def check_gradients(op, attrs, inputs, make_ctx=lambda: CTX, eps=1e-6, rtol=1e-6, seed=0):
    """Backward vs central differences along random directions, for every non-None gradient."""
    rng = np.random.default_rng(seed)
    kernel = KERNELS[op]
    y, saved = kernel.forward(make_ctx(), attrs, *inputs)
    g = np.asarray(rng.standard_normal(y.shape))
    grads = kernel.backward(make_ctx(), attrs, g, saved)
    assert len(grads) == len(inputs)
    checked = 0
    for i, grad in enumerate(grads):
        if grad is None:
            continue
        assert grad.shape == inputs[i].shape and grad.dtype == np.float64
        d = rng.standard_normal(inputs[i].shape)
        plus, minus = list(inputs), list(inputs)
        plus[i], minus[i] = inputs[i] + eps * d, inputs[i] - eps * d
        y_plus = kernel.forward(make_ctx(), attrs, *plus)[0]
        y_minus = kernel.forward(make_ctx(), attrs, *minus)[0]
        numeric = np.sum(g * (y_plus - y_minus)) / (2 * eps)
        analytic = np.sum(grad * d)
        assert abs(numeric - analytic) <= rtol * max(abs(analytic), abs(numeric), 1e-3), (
            f"{op} input {i}: analytic {analytic} vs numeric {numeric}"
        )
        checked += 1
    return checked


# -- registry and geometry -------------------------------------------------------------------


def test_every_op_has_a_kernel():
    expected = {
        "conv",
        "relu",
        "lrn",
        "maxpool",
        "avgpool",
        "adaptive_avgpool",
        "flatten",
        "dropout",
        "linear",
        "softmax",
        "log_softmax",
        "concat",
        "add",
        "softmax_cross_entropy",
    }
    assert set(KERNELS) == expected
    for op, kernel in KERNELS.items():
        assert callable(kernel.forward) and callable(kernel.backward), op
        # What it saves and the scratch it needs: the compiler plans the arena from them.
        memory = kernel.memory
        assert isinstance(memory, Memory), op
        assert all(getattr(memory, f.name) is not None for f in fields(Memory)), op
        assert callable(memory.saved) and callable(memory.workspace), op


@pytest.mark.parametrize(
    "h, k, s, pads, ceil_mode, expected",
    [
        (55, 3, 2, (0, 0), False, 27),  # AlexNet's overlapping pools
        (13, 3, 2, (0, 0), False, 6),
        (6, 3, 2, (0, 0), False, 2),
        (6, 3, 2, (0, 0), True, 3),  # the last window overhangs the input
        (5, 2, 2, (1, 1), True, 3),  # ceil gives 4, but window 4 would start in the padding
        (8, 3, 3, (0, 0), True, 3),
    ],
)
def test_pool_output_size(h, k, s, pads, ceil_mode, expected):
    x = np.zeros((1, 1, h, h))
    y, _ = forward("maxpool", pool_attrs((k, k), (s, s), (pads[0], 0, pads[1], 0), ceil_mode), x)
    assert y.shape[2] == expected
    assert len(window_starts(h, k, s, pads[0], pads[1], ceil_mode)) == expected


# -- forward vs NumPy definitions ------------------------------------------------------------

CONV_CASES = {
    "plain": ((2, 3, 7, 7), conv_attrs(4, (3, 3))),
    "strided-asym-pad": ((2, 3, 9, 8), conv_attrs(5, (3, 2), (2, 3), (1, 0, 2, 1))),
    "groups-dilation": ((2, 4, 9, 10), conv_attrs(6, (3, 2), (1, 2), (2, 1, 0, 1), (2, 3), 2)),
    "no-bias-groups": (
        (3, 6, 6, 6),
        conv_attrs(6, (2, 2), (2, 2), (1, 1, 1, 1), groups=3, bias=False),
    ),
    "alexnet-conv1-like": ((1, 3, 23, 23), conv_attrs(4, (11, 11), (4, 4))),
    # Shared padding gaps between rows and samples, groups, dilation, a vertical-only stride.
    "wide-alexnet-conv4-like": (
        (3, 4, 6, 6),
        conv_attrs(6, (3, 3), (1, 1), (1, 1, 1, 1), groups=2),
    ),
    "wide-vstride-dilated": ((2, 4, 11, 9), conv_attrs(4, (3, 2), (2, 1), (0, 2, 1, 1), (2, 3), 2)),
}


def conv_inputs(case, rng, dtype=np.float64):
    shape, attrs = CONV_CASES[case]
    w = rng.standard_normal((attrs["filters"], shape[1] // attrs["groups"], *attrs["kernel"]))
    inputs = [rng.standard_normal(shape), w]
    if attrs["bias"]:
        inputs.append(rng.standard_normal(attrs["filters"]))
    return attrs, [a.astype(dtype) for a in inputs]


@pytest.fixture(params=[None, 1, 2], ids=["one-block", "block-1", "block-2"])
def conv_block(request):
    """A context forcing the batch into GEMM blocks of 1 or 2 samples (2 leaves a ragged last
    block), or the blocks the byte budget gives."""
    return KernelContext(conv_block_samples=request.param)


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_forward(case, conv_block):
    attrs, inputs = conv_inputs(case, np.random.default_rng(1))
    y, _ = forward("conv", attrs, *inputs, ctx=conv_block)
    b = inputs[2] if attrs["bias"] else None
    expected = ref_conv(
        inputs[0], inputs[1], b, attrs["stride"], attrs["pad"], attrs["dilation"], attrs["groups"]
    )
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", ["conv", "linear"])
def test_fused_relu_clamps_the_same_result(op):
    """Inference plans set relu=True on the conv or linear before a relu."""
    rng = np.random.default_rng(5)
    if op == "conv":
        attrs, inputs = conv_inputs("groups-dilation", rng)
    else:
        attrs, inputs = (
            dict(units=3, bias=True),
            [rng.standard_normal(s) for s in ((4, 6), (3, 6), 3)],
        )
    y, _ = forward(op, attrs, *inputs)
    fused, _ = forward(op, {**attrs, "relu": True}, *inputs)
    assert (y < 0).any()
    np.testing.assert_array_equal(fused, np.maximum(y, 0))


@pytest.mark.parametrize(
    "shape, attrs",
    [
        ((2, 3, 7, 7), pool_attrs((3, 3), (2, 2))),
        ((2, 2, 8, 7), pool_attrs((3, 3), (2, 2), ceil_mode=True)),
        ((2, 2, 6, 7), pool_attrs((3, 2), (2, 2), (1, 0, 1, 1), ceil_mode=True)),
        ((1, 2, 5, 5), pool_attrs((2, 2), (2, 2), (1, 1, 1, 1), ceil_mode=True)),
        ((1, 2, 9, 6), pool_attrs((2, 3), (3, 1), (1, 1, 0, 2))),
    ],
)
def test_maxpool_forward(shape, attrs):
    x = np.random.default_rng(2).standard_normal(shape)
    y, (argmax, _) = forward("maxpool", attrs, x)
    expected, _ = ref_pool(
        x, attrs["kernel"], attrs["stride"], attrs["pad"], attrs["ceil_mode"], "max"
    )
    assert y.shape == expected.shape
    np.testing.assert_array_equal(y, expected)
    assert argmax.nbytes == y.size  # one byte per output element


# (input shape, (kernel, stride, pad, ceil_mode)) for avgpool's forward and gradient tests.
AVGPOOL_CASES = [
    ((2, 2, 7, 7), ((3, 3), (2, 2), (0, 0, 0, 0), False)),
    ((2, 2, 6, 7), ((3, 3), (2, 2), (1, 1, 1, 1), True)),
    ((1, 2, 8, 5), ((2, 3), (3, 2), (1, 0, 0, 2), True)),
    ((1, 2, 5, 6), ((2, 2), (2, 2), (1, 1, 1, 1), False)),
]


@pytest.mark.parametrize("count_include_pad", [False, True])
@pytest.mark.parametrize("shape, geometry", AVGPOOL_CASES)
def test_avgpool_forward(shape, geometry, count_include_pad):
    kernel, stride, pad, ceil_mode = geometry
    x = np.random.default_rng(3).standard_normal(shape)
    attrs = pool_attrs(kernel, stride, pad, ceil_mode, count_include_pad=count_include_pad)
    y, _ = forward("avgpool", attrs, x)
    expected = ref_pool(x, kernel, stride, pad, ceil_mode, "avg", count_include_pad)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-14)


def test_avgpool_count_include_pad_differs_at_borders():
    x = np.ones((1, 1, 4, 4))
    attrs = pool_attrs((3, 3), (1, 1), (1, 1, 1, 1))
    inclusive, _ = forward("avgpool", dict(attrs, count_include_pad=True), x)
    exclusive, _ = forward("avgpool", dict(attrs, count_include_pad=False), x)
    np.testing.assert_allclose(exclusive, 1.0)
    assert inclusive[0, 0, 0, 0] == pytest.approx(4 / 9)
    assert inclusive[0, 0, 1, 0] == pytest.approx(6 / 9)
    assert inclusive[0, 0, 1, 1] == pytest.approx(1.0)


# Uneven bins both ways, one axis only (each way round), and the identity.
ADAPTIVE_CASES = [
    ((7, 7), (3, 3)),
    ((5, 7), (2, 3)),
    ((7, 4), (3, 4)),
    ((6, 5), (6, 2)),
    ((6, 6), (6, 6)),
]


@pytest.mark.parametrize("hw, out", ADAPTIVE_CASES)
def test_adaptive_avgpool_forward(hw, out):
    x = np.random.default_rng(4).standard_normal((2, 3, *hw))
    y, _ = forward("adaptive_avgpool", dict(output=out), x)
    np.testing.assert_allclose(y, ref_adaptive(x, out), rtol=1e-12, atol=1e-14)


def test_adaptive_avgpool_uneven_bins_overlap():
    x = np.arange(7.0).reshape(1, 1, 7, 1) * np.ones((1, 1, 1, 1))
    y, _ = forward("adaptive_avgpool", dict(output=(3, 1)), x)
    # 7 -> 3 bins: [0, 3), [2, 5), [4, 7); the middle bin shares an element with each neighbour.
    np.testing.assert_allclose(y.ravel(), [1.0, 3.0, 5.0])


@pytest.mark.parametrize("convention", ["paper", "onnx"])
@pytest.mark.parametrize("size, channels", [(5, 7), (3, 2), (5, 3), (1, 4)])
def test_lrn_forward(convention, size, channels):
    x = np.random.default_rng(5).standard_normal((2, channels, 3, 4)) * 3
    attrs = lrn_attrs(size=size, alpha=0.05, beta=0.75, bias=1.5, convention=convention)
    y, _ = forward("lrn", attrs, x)
    np.testing.assert_allclose(y, ref_lrn(x, size, 0.05, 0.75, 1.5, convention), rtol=1e-12)
    y2, _ = forward("lrn", dict(attrs, beta=0.6), x)  # the general power path
    np.testing.assert_allclose(y2, ref_lrn(x, size, 0.05, 0.6, 1.5, convention), rtol=1e-12)


def test_lrn_paper_alpha_equals_onnx_alpha_times_size():
    x = np.random.default_rng(6).standard_normal((2, 8, 3, 3)) * 5
    paper, _ = forward("lrn", lrn_attrs(alpha=1e-2, convention="paper"), x)
    onnx_form, _ = forward("lrn", lrn_attrs(alpha=5e-2, convention="onnx"), x)
    same_alpha, _ = forward("lrn", lrn_attrs(alpha=1e-2, convention="onnx"), x)
    np.testing.assert_allclose(paper, onnx_form, rtol=1e-14)
    assert np.abs(paper - same_alpha).max() > 1e-3


def test_relu_forward():
    x = np.array([[-2.0, -0.0, 0.0, 0.5, 3.0]])
    y, _ = forward("relu", {}, x)
    np.testing.assert_array_equal(y, [[0, 0, 0, 0.5, 3.0]])


@pytest.mark.parametrize("axis", [1, 0, -1])
def test_softmax_forward(axis):
    x = np.random.default_rng(7).standard_normal((3, 5)) * 4
    y, _ = forward("softmax", dict(axis=axis), x)
    np.testing.assert_allclose(y, ref_softmax(x, axis), rtol=1e-13)


def test_softmax_is_stable_for_large_logits():
    y, _ = forward("softmax", dict(axis=1), np.array([[1000.0, 1000.0, -1000.0]]))
    np.testing.assert_allclose(y, [[0.5, 0.5, 0.0]])


def test_concat_forward():
    rng = np.random.default_rng(8)
    xs = [rng.standard_normal((2, c, 3, 3)) for c in (1, 4, 2)]
    y, _ = forward("concat", dict(axis=1), *xs)
    assert y.shape == (2, 7, 3, 3)
    np.testing.assert_array_equal(y[:, 1:5], xs[1])
    np.testing.assert_array_equal(y[:, 5:], xs[2])


def test_add_forward():
    a, b = np.arange(6.0).reshape(2, 3), np.full((2, 3), 0.5)
    y, _ = forward("add", {}, a, b)
    np.testing.assert_array_equal(y, [[0.5, 1.5, 2.5], [3.5, 4.5, 5.5]])


# alexc's flatten never merges the batch: axis 2 keeps (N, C) and merges H*W.
@pytest.mark.parametrize("axis, shape", [(1, (2, 60)), (2, (2, 3, 20)), (3, (2, 3, 4, 5))])
def test_flatten_forward(axis, shape):
    x = np.arange(120.0).reshape(2, 3, 4, 5)
    y, _ = forward("flatten", dict(axis=axis), x)
    assert y.shape == shape
    np.testing.assert_array_equal(y.ravel(), np.arange(120.0))


@pytest.mark.parametrize("batch", [4, 1], ids=["batch-4", "one-sample"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_forward(bias, batch):
    rng = np.random.default_rng(9)
    x, w, b = rng.standard_normal((batch, 6)), rng.standard_normal((3, 6)), rng.standard_normal(3)
    inputs = (x, w, b) if bias else (x, w)
    y, _ = forward("linear", dict(units=3, bias=bias), *inputs)
    expected = np.array(
        [
            [sum(x[n, k] * w[u, k] for k in range(6)) + (b[u] if bias else 0) for u in range(3)]
            for n in range(batch)
        ]
    )
    np.testing.assert_allclose(y, expected, rtol=1e-12)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy_forward(smoothing):
    rng = np.random.default_rng(10)
    logits, labels = rng.standard_normal((5, 7)) * 3, rng.integers(0, 7, 5)
    loss, _ = forward("softmax_cross_entropy", dict(label_smoothing=smoothing), logits, labels)
    assert loss.shape == () and loss.dtype == np.float64
    assert float(loss) == pytest.approx(ref_cross_entropy(logits, labels, smoothing), rel=1e-12)


def test_softmax_cross_entropy_is_stable_and_checks_labels():
    logits = np.array([[1000.0, 0.0], [0.0, 1000.0]])
    loss, _ = forward("softmax_cross_entropy", dict(label_smoothing=0.0), logits, np.array([0, 0]))
    assert float(loss) == pytest.approx(500.0)
    with pytest.raises(ValueError, match="labels"):
        forward("softmax_cross_entropy", dict(label_smoothing=0.0), logits, np.array([0, -1]))


def test_dropout_train_mask_statistics_and_scale():
    x = np.random.default_rng(11).uniform(1.0, 2.0, (200, 1000))
    attrs = dict(rate=0.3)
    y, (mask, scale) = forward("dropout", attrs, x, ctx=train_ctx(3))
    assert mask.dtype == bool and mask.shape == x.shape
    kept = y != 0
    np.testing.assert_array_equal(kept, mask)
    # 200,000 Bernoulli(0.7) draws: the standard deviation of the kept fraction is about 0.001.
    assert abs(kept.mean() - 0.7) < 0.005
    np.testing.assert_allclose(y[kept], x[kept] / 0.7, rtol=1e-15)
    assert scale == pytest.approx(1 / 0.7)
    again, _ = forward("dropout", attrs, x, ctx=train_ctx(3))
    np.testing.assert_array_equal(again, y)
    other, _ = forward("dropout", attrs, x, ctx=train_ctx(4))
    assert not np.array_equal(other, y)


def test_dropout_is_identity_at_inference():
    x = np.random.default_rng(12).standard_normal((4, 5))
    y, saved = forward(
        "dropout", dict(rate=0.5), x, ctx=KernelContext(rng=np.random.default_rng(0))
    )
    np.testing.assert_array_equal(y, x)
    (dx,) = KERNELS["dropout"].backward(CTX, dict(rate=0.5), np.ones_like(x), saved)
    np.testing.assert_array_equal(dx, 1.0)


# -- forward vs onnxruntime ------------------------------------------------------------------


@pytest.mark.parametrize("case", ["strided-asym-pad", "groups-dilation", "no-bias-groups"])
def test_conv_matches_onnxruntime(case):
    attrs, inputs = conv_inputs(case, np.random.default_rng(13), np.float32)
    y, _ = forward("conv", attrs, *inputs)
    top, left, bottom, right = attrs["pad"]
    expected = ort_run(
        "Conv",
        inputs,
        kernel_shape=list(attrs["kernel"]),
        strides=list(attrs["stride"]),
        pads=[top, left, bottom, right],
        dilations=list(attrs["dilation"]),
        group=attrs["groups"],
    )
    assert_close32(y, expected)


@pytest.mark.parametrize(
    "shape, attrs",
    [
        ((2, 3, 13, 13), pool_attrs((3, 3), (2, 2), ceil_mode=True)),
        ((2, 2, 8, 7), pool_attrs((3, 3), (2, 2), (1, 0, 1, 1), ceil_mode=True)),
        ((1, 2, 5, 5), pool_attrs((2, 2), (2, 2), (1, 1, 1, 1), ceil_mode=True)),
        ((2, 3, 11, 11), pool_attrs((3, 3), (2, 2))),
    ],
)
def test_maxpool_matches_onnxruntime(shape, attrs):
    x = np.random.default_rng(14).standard_normal(shape).astype(np.float32)
    y, _ = forward("maxpool", attrs, x)
    expected = ort_run(
        "MaxPool",
        [x],
        kernel_shape=list(attrs["kernel"]),
        strides=list(attrs["stride"]),
        pads=list(attrs["pad"]),
        ceil_mode=int(attrs["ceil_mode"]),
    )
    assert y.shape == expected.shape
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("count_include_pad", [False, True])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_avgpool_matches_onnxruntime(ceil_mode, count_include_pad):
    x = np.random.default_rng(15).standard_normal((2, 3, 8, 9)).astype(np.float32)
    attrs = pool_attrs((3, 2), (2, 2), (1, 1, 1, 0), ceil_mode, count_include_pad=count_include_pad)
    y, _ = forward("avgpool", attrs, x)
    expected = ort_run(
        "AveragePool",
        [x],
        kernel_shape=[3, 2],
        strides=[2, 2],
        pads=[1, 1, 1, 0],
        ceil_mode=int(ceil_mode),
        count_include_pad=int(count_include_pad),
    )
    assert_close32(y, expected)


@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("convention", ["onnx", "paper"])
def test_lrn_matches_onnxruntime(convention, size):
    x = (np.random.default_rng(16).standard_normal((2, 9, 4, 5)) * 10).astype(np.float32)
    alpha = 1e-3
    y, _ = forward("lrn", lrn_attrs(size=size, alpha=alpha, convention=convention), x)
    onnx_alpha = alpha * size if convention == "paper" else alpha
    expected = ort_run("LRN", [x], size=size, alpha=onnx_alpha, beta=0.75, bias=2.0)
    assert_close32(y, expected)


# -- backward vs finite differences (float64) -------------------------------------------------


@pytest.mark.parametrize("fold", ["none", "row", "all"])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_gradients(case, fold, conv_block):
    """Every way backward can group kernel taps into GEMMs (the choice otherwise follows the
    channel count, and these small cases would all take "all")."""
    ctx = replace(conv_block, conv_fold=fold)
    attrs, inputs = conv_inputs(case, np.random.default_rng(17))
    assert check_gradients("conv", attrs, inputs, make_ctx=lambda: ctx) == len(inputs)


@pytest.mark.parametrize("convention", ["paper", "onnx"])
@pytest.mark.parametrize("beta", [0.75, 0.6])
def test_lrn_gradients(convention, beta):
    x = np.random.default_rng(18).standard_normal((2, 7, 3, 3)) * 2
    attrs = lrn_attrs(size=5, alpha=0.1, beta=beta, bias=1.0, convention=convention)
    assert check_gradients("lrn", attrs, [x]) == 1


@pytest.mark.parametrize(
    "shape, attrs",
    [
        ((2, 2, 7, 7), pool_attrs((3, 3), (2, 2))),
        ((2, 2, 6, 7), pool_attrs((3, 3), (2, 2), (1, 0, 1, 1), ceil_mode=True)),
        ((1, 2, 5, 5), pool_attrs((2, 2), (2, 2), (1, 1, 1, 1), ceil_mode=True)),
    ],
)
def test_maxpool_gradients(shape, attrs):
    x = distinct(np.random.default_rng(19), shape)
    assert check_gradients("maxpool", attrs, [x]) == 1


def test_maxpool_gradient_goes_to_first_max_on_ties():
    rng = np.random.default_rng(20)
    x = rng.integers(0, 3, (2, 3, 7, 8)).astype(np.float64)  # many exact ties
    for attrs in (pool_attrs((3, 3), (2, 2)), pool_attrs((3, 2), (2, 1), (1, 1, 0, 1), True)):
        y, saved = forward("maxpool", attrs, x)
        dy = rng.standard_normal(y.shape)
        (dx,) = KERNELS["maxpool"].backward(CTX, attrs, dy, saved)
        _, where = ref_pool(
            x, attrs["kernel"], attrs["stride"], attrs["pad"], attrs["ceil_mode"], "max"
        )
        np.testing.assert_allclose(dx, ref_maxpool_grad(x.shape, where, dy), rtol=1e-14)


@pytest.mark.parametrize("count_include_pad", [False, True])
@pytest.mark.parametrize("shape, geometry", AVGPOOL_CASES)
def test_avgpool_gradients(shape, geometry, count_include_pad):
    kernel, stride, pad, ceil_mode = geometry
    x = np.random.default_rng(21).standard_normal(shape)
    attrs = pool_attrs(kernel, stride, pad, ceil_mode, count_include_pad=count_include_pad)
    assert check_gradients("avgpool", attrs, [x]) == 1


@pytest.mark.parametrize("hw, out", ADAPTIVE_CASES)
def test_adaptive_avgpool_gradients(hw, out):
    x = np.random.default_rng(22).standard_normal((2, 3, *hw))
    assert check_gradients("adaptive_avgpool", dict(output=out), [x]) == 1


def test_relu_gradients():
    rng = np.random.default_rng(23)
    x = rng.choice([-1.0, 1.0], (3, 4, 5)) * rng.uniform(0.1, 2.0, (3, 4, 5))  # away from 0
    assert check_gradients("relu", {}, [x]) == 1


def test_dropout_gradients():
    x = np.random.default_rng(24).standard_normal((6, 50))

    # A fresh, equally seeded RNG per call: every evaluation draws the same mask.
    assert check_gradients("dropout", dict(rate=0.4), [x], lambda: train_ctx(5)) == 1


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients(bias):
    rng = np.random.default_rng(25)
    inputs = [rng.standard_normal((4, 6)), rng.standard_normal((3, 6)), rng.standard_normal(3)]
    inputs = inputs if bias else inputs[:2]
    assert check_gradients("linear", dict(units=3, bias=bias), inputs) == len(inputs)


@pytest.mark.parametrize("axis", [1, 0])
def test_softmax_gradients(axis):
    x = np.random.default_rng(26).standard_normal((4, 6)) * 2
    assert check_gradients("softmax", dict(axis=axis), [x]) == 1


@pytest.mark.parametrize("axis", [1, 0])
def test_log_softmax_forward_and_gradients(axis):
    x = np.random.default_rng(27).standard_normal((4, 6)) * 3
    y, _ = forward("log_softmax", dict(axis=axis), x)
    np.testing.assert_allclose(y, np.log(ref_softmax(x, axis)), rtol=1e-12)
    big, _ = forward("log_softmax", dict(axis=1), np.array([[1000.0, 0.0]]))
    np.testing.assert_allclose(big, [[0.0, -1000.0]])
    assert check_gradients("log_softmax", dict(axis=axis), [x]) == 1


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_softmax_cross_entropy_gradients(smoothing):
    rng = np.random.default_rng(27)
    logits, labels = rng.standard_normal((5, 7)) * 2, rng.integers(0, 7, 5)
    attrs = dict(label_smoothing=smoothing)
    assert check_gradients("softmax_cross_entropy", attrs, [logits, labels]) == 1
    _, saved = forward("softmax_cross_entropy", attrs, logits, labels)
    dlogits, dlabels = KERNELS["softmax_cross_entropy"].backward(CTX, attrs, np.array(1.0), saved)
    assert dlabels is None
    target = np.full((5, 7), smoothing / 7)
    target[np.arange(5), labels] += 1 - smoothing
    np.testing.assert_allclose(dlogits, (ref_softmax(logits, 1) - target) / 5, rtol=1e-12)


@pytest.mark.parametrize("axis", [1, 0, -1])
def test_concat_gradients(axis):
    rng = np.random.default_rng(28)
    shapes = {1: [(2, 1, 3), (2, 3, 3)], 0: [(1, 2, 3), (3, 2, 3)], -1: [(2, 2, 2), (2, 2, 1)]}
    inputs = [rng.standard_normal(s) for s in shapes[axis]]
    assert check_gradients("concat", dict(axis=axis), inputs) == 2


def test_add_and_flatten_gradients():
    rng = np.random.default_rng(29)
    assert (
        check_gradients("add", {}, [rng.standard_normal((2, 3)), rng.standard_normal((2, 3))]) == 2
    )
    assert check_gradients("flatten", dict(axis=1), [rng.standard_normal((2, 3, 2, 2))]) == 1


# -- float32 path ----------------------------------------------------------------------------


def _float32_cases():
    rng = np.random.default_rng(30)
    x4 = rng.standard_normal((2, 6, 9, 9))
    attrs, conv_in = conv_inputs("groups-dilation", rng)
    return [
        ("conv", attrs, conv_in),
        ("relu", {}, [x4]),
        ("lrn", lrn_attrs(alpha=0.05), [x4 * 3]),
        ("lrn", lrn_attrs(alpha=0.05, beta=0.6, convention="onnx"), [x4 * 3]),
        ("maxpool", pool_attrs((3, 3), (2, 2), (1, 0, 1, 1), True), [x4]),
        ("avgpool", pool_attrs((3, 3), (2, 2), ceil_mode=True, count_include_pad=False), [x4]),
        ("adaptive_avgpool", dict(output=(4, 3)), [x4]),
        ("flatten", dict(axis=1), [x4]),
        ("dropout", dict(rate=0.5), [x4]),
        (
            "linear",
            dict(units=3, bias=True),
            [x4.reshape(2, -1), rng.standard_normal((3, 486)), rng.standard_normal(3)],
        ),
        ("softmax", dict(axis=1), [x4.reshape(2, -1)]),
        ("concat", dict(axis=1), [x4, x4[:, :2]]),
        ("add", {}, [x4, x4[::-1].copy()]),
    ]


@pytest.mark.parametrize(
    "op, attrs, inputs", _float32_cases(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_float32_matches_float64(op, attrs, inputs):
    def ctx():
        return train_ctx(1)

    y64, saved64 = forward(op, attrs, *inputs, ctx=ctx())
    y32, saved32 = forward(op, attrs, *[a.astype(np.float32) for a in inputs], ctx=ctx())
    assert_close32(y32, y64)
    dy = np.random.default_rng(2).standard_normal(y64.shape)
    grads64 = KERNELS[op].backward(ctx(), attrs, dy, saved64)
    grads32 = KERNELS[op].backward(ctx(), attrs, dy.astype(np.float32), saved32)
    for g32, g64 in zip(grads32, grads64, strict=True):
        assert_close32(g32, g64, rtol=2e-5)


def test_float32_cross_entropy():
    rng = np.random.default_rng(31)
    logits, labels = rng.standard_normal((6, 10)) * 3, rng.integers(0, 10, 6)
    attrs = dict(label_smoothing=0.1)
    loss64, saved64 = forward("softmax_cross_entropy", attrs, logits, labels)
    loss32, saved32 = forward("softmax_cross_entropy", attrs, logits.astype(np.float32), labels)
    assert loss32.shape == () and loss32.dtype == np.float32
    assert float(loss32) == pytest.approx(float(loss64), rel=1e-6)
    backward = KERNELS["softmax_cross_entropy"].backward
    g32, _ = backward(CTX, attrs, np.array(1.0, np.float32), saved32)
    g64, _ = backward(CTX, attrs, np.array(1.0), saved64)
    assert_close32(g32, g64)


# -- the shard pool --------------------------------------------------------------------------


def test_split_range_is_contiguous_and_covers():
    assert split_range(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert split_range(2, 4) == [(0, 1), (1, 2)]
    assert split_range(0, 2) == [(0, 0)]


def test_shard_pool_runs_every_chunk_once_in_parallel_threads():
    seen, lock = [], threading.Lock()

    def record(start, stop):
        with lock:
            seen.append((start, stop, threading.get_ident()))

    with ShardPool(2) as pool:
        pool.map_range(record, 5)
    assert sorted(s[:2] for s in seen) == [(0, 2), (2, 5)]
    assert len({s[2] for s in seen}) == 2

    seen.clear()
    single = ShardPool(1)
    single.map_range(record, 5)
    single.close()
    assert [s[:2] for s in seen] == [(0, 5)]


def test_shard_pool_propagates_exceptions():
    def fail_late(start, stop):
        if start > 0:
            raise RuntimeError("chunk failed")

    with ShardPool(3) as pool, pytest.raises(RuntimeError, match="chunk failed"):
        pool.map_range(fail_late, 9)


def _threaded_cases():
    rng = np.random.default_rng(32)
    x = rng.standard_normal((5, 8, 13, 13)).astype(np.float32)
    attrs, conv_in = conv_inputs("groups-dilation", rng, np.float32)
    conv_in[0] = rng.standard_normal((5, 4, 9, 10)).astype(np.float32)
    big = rng.standard_normal((4, 40, 30, 30)).astype(np.float32)  # above the sharding threshold
    return [
        ("conv", attrs, conv_in),
        ("lrn", lrn_attrs(alpha=0.05), [x]),
        ("maxpool", pool_attrs((3, 3), (2, 2), ceil_mode=True), [x]),
        ("avgpool", pool_attrs((3, 3), (2, 2), (1, 1, 1, 1), count_include_pad=True), [x]),
        ("adaptive_avgpool", dict(output=(6, 5)), [x]),
        ("relu", {}, [big]),
        ("add", {}, [big, big[::-1].copy()]),
    ]


@pytest.mark.parametrize(
    "op, attrs, inputs", _threaded_cases(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_two_threads_match_one_bit_for_bit(op, attrs, inputs):
    results = []
    # One thread; two threads; two threads walking their chunks one sample at a time.
    for threads, cache_block in ((1, base.CACHE_BLOCK_BYTES), (2, base.CACHE_BLOCK_BYTES), (2, 1)):
        with ShardPool(threads) as pool:
            ctx = KernelContext(pool=pool, cache_block_bytes=cache_block)
            y, saved = forward(op, attrs, *inputs, ctx=ctx)
            dy = np.random.default_rng(3).standard_normal(y.shape).astype(y.dtype)
            grads = KERNELS[op].backward(ctx, attrs, dy, saved)
            results.append([y.copy(), *[g.copy() for g in grads]])
    for first, *others in zip(*results, strict=True):
        for other in others:
            np.testing.assert_array_equal(first, other)


@pytest.mark.parametrize(
    "op, attrs",
    [
        ("relu", {}),
        ("maxpool", pool_attrs((3, 3), (2, 2), (1, 0, 1, 1), ceil_mode=True)),
        ("lrn", lrn_attrs(alpha=0.05)),
    ],
)
def test_inference_context_skips_saved_state_with_the_same_output(op, attrs):
    x = np.random.default_rng(40).standard_normal((3, 4, 9, 8))
    y_grad, saved = forward(op, attrs, x)
    y_infer, nothing = forward(op, attrs, x, ctx=KernelContext(grad=False))
    np.testing.assert_array_equal(y_infer, y_grad)
    assert saved and nothing == ()


def test_conv_backward_skips_dx_when_not_needed():
    """The first layer's input is the image: no dx, the same dw and db."""
    attrs, inputs = conv_inputs("wide-alexnet-conv4-like", np.random.default_rng(41))
    y, saved = forward("conv", attrs, *inputs)
    dy = np.random.default_rng(42).standard_normal(y.shape)
    full = KERNELS["conv"].backward(CTX, attrs, dy, saved)
    partial = KERNELS["conv"].backward(KernelContext(needs=(False, True, True)), attrs, dy, saved)
    assert partial[0] is None
    np.testing.assert_array_equal(partial[1], full[1])
    np.testing.assert_array_equal(partial[2], full[2])
