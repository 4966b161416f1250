"""nbckpt.jupyter.stats and nbckpt.jupyter.pictures: statistics and pictures of one array."""

from __future__ import annotations

import io
import subprocess
import sys
import types

import matplotlib.image
import ml_dtypes
import numpy as np
import pytest

import nbckpt
from nbckpt.format.dtypes import TORCH_DTYPES, by_torch_name
from nbckpt.jupyter import pictures, stats
from nbckpt.jupyter.stats import array_stats, first_values, leading_values, sample_flat

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def expected_stats(values: np.ndarray) -> dict:
    """What the statistics must be, computed plainly with NumPy in float64."""
    finite = values[np.isfinite(values)].astype(np.float64)
    return {"min": finite.min(), "max": finite.max(), "mean": finite.mean(), "std": finite.std()}


# --------------------------------------------------------------------------------------
# Every dtype


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_stats_are_exact_and_skip_nan_and_inf(dtype):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 40)).astype(dtype)
    a[0, :3] = 0
    a[1, 0], a[1, 1], a[1, 2], a[2, 0] = np.nan, np.inf, -np.inf, np.nan
    s = array_stats(a)
    want = expected_stats(a)
    assert s.min == want["min"] and s.max == want["max"]
    assert type(s.min) is float
    assert s.mean == pytest.approx(want["mean"], rel=1e-12)
    assert s.std == pytest.approx(want["std"], rel=1e-12)
    assert (s.nan_count, s.inf_count) == (2, 2)
    assert s.zero_fraction == 3 / 2000
    assert (s.shape, s.dtype, s.device, s.size, s.nbytes) == ((50, 40), str(np.dtype(dtype)), "cpu", 2000, a.nbytes)
    assert (s.sampled, s.counted, s.note) == (False, 2000, "")


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64])
def test_integer_min_and_max_are_exact_ints(dtype):
    info = np.iinfo(dtype)
    a = np.array([info.min, 0, 0, 7, info.max], dtype=dtype)
    s = array_stats(a)
    assert (s.min, s.max) == (int(info.min), int(info.max))
    assert type(s.min) is int and type(s.max) is int
    assert s.mean == pytest.approx(a.astype(np.float64).mean(), rel=1e-12)
    assert s.std == pytest.approx(a.astype(np.float64).std(), rel=1e-12)
    assert (s.nan_count, s.inf_count, s.zero_fraction) == (0, 0, np.count_nonzero(a == 0) / 5)


def test_bool_stats():
    s = array_stats(np.array([True, False, False, False]))
    assert (s.min, s.max, s.mean, s.zero_fraction) == (False, True, 0.25, 0.75)
    assert s.std == pytest.approx(np.std([1.0, 0, 0, 0]))


@pytest.mark.parametrize("name", ["bfloat16", "float8_e5m2", "float8_e4m3fn", "float8_e5m2fnuz", "float8_e4m3fnuz"])
def test_ml_dtypes_floats_through_float32(name):
    dtype = by_torch_name(name).numpy
    a = np.array([0.5, -2, 0, 1.25, 3], dtype=dtype)
    s = array_stats(a)
    values = a.astype(np.float32).astype(np.float64)
    assert (s.min, s.max) == (-2.0, 3.0)
    assert s.mean == pytest.approx(values.mean()) and s.std == pytest.approx(values.std())
    assert s.zero_fraction == 0.2 and s.dtype == name


def test_nan_and_inf_in_bfloat16():
    a = np.array([1, np.nan, np.inf, -np.inf, 2], dtype=ml_dtypes.bfloat16)
    s = array_stats(a)
    assert (s.nan_count, s.inf_count, s.min, s.max, s.mean) == (1, 2, 1.0, 2.0, 1.5)


def test_complex_by_magnitude():
    a = np.array([3 + 4j, 0, 1j, np.nan + 1j, complex(np.inf, 0)], dtype=np.complex64)
    s = array_stats(a)
    assert (s.min, s.max, s.mean) == (0.0, 5.0, 2.0)
    assert s.std == pytest.approx(np.std([5.0, 0.0, 1.0]))
    assert (s.nan_count, s.inf_count, s.zero_fraction) == (1, 1, 0.2)
    assert s.note == "complex: min, max, mean and std of the magnitudes |z|"


def test_complex32_by_magnitude():
    a = np.zeros(3, dtype=nbckpt.complex32)
    a["real"], a["imag"] = [3, 0, -1], [4, 0, 0]
    s = array_stats(a)
    assert (s.min, s.max, s.mean, s.zero_fraction) == (0.0, 5.0, 2.0, 1 / 3)
    assert first_values(a) == "[ 3.+4.j,  0.+0.j, -1.+0.j]"


def test_every_torch_dtype_gives_stats_or_says_why_not():
    for torch_dtype in TORCH_DTYPES:
        a = np.zeros((2, 3), dtype=torch_dtype.numpy)
        s = array_stats(a)
        if torch_dtype.numpy.metadata and torch_dtype.name != "complex32":
            assert not s.has_values and s.min is None, torch_dtype
            assert s.note == (f"raw bits of torch.{torch_dtype.name} (NumPy cannot compute with it): "
                              f"no statistics")
        else:
            assert s.has_values and s.zero_fraction in (0.0, 1.0), torch_dtype  # float8_e8m0fnu has no zero
        assert first_values(a, 2).endswith(", …]"), torch_dtype


def test_meta_array_has_no_stats():
    s = array_stats(nbckpt.MetaArray((4, 5), np.float32))
    assert (s.shape, s.dtype, s.device, s.nbytes, s.has_values) == ((4, 5), "float32", "meta", 80, False)
    assert s.note == "a meta tensor: shape and dtype only, no data"
    assert first_values(nbckpt.MetaArray((4, 5), np.float32)) == "no values: a meta tensor has no data"


def test_empty_and_zero_d_arrays():
    s = array_stats(np.zeros((0, 3), np.float32))
    assert (s.size, s.min, s.nan_count, s.zero_fraction) == (0, None, 0, None)
    assert first_values(np.zeros((0, 3))) == "[]"
    s = array_stats(np.array(-2.5))
    assert (s.shape, s.min, s.max, s.std) == ((), -2.5, -2.5, 0.0)
    assert first_values(np.array(-2.5)) == "-2.5"


def test_all_nan_has_counts_but_no_min():
    s = array_stats(np.full(4, np.nan))
    assert (s.nan_count, s.min, s.mean) == (4, None, None)


def test_rows_and_text():
    s = array_stats(np.array([[0.0, 1.0], [2.0, np.nan]], dtype=np.float32))
    assert s.rows() == [("shape", "(2, 2)"), ("dtype", "float32"), ("device", "cpu"), ("size", "4 elements, 16 B"),
                        ("min", "0.0"), ("max", "2.0"), ("mean", "1.0"), ("std", "0.816497"), ("NaN", "1"),
                        ("Inf", "0"), ("zeros", "25.00%")]
    assert str(s).splitlines()[4] == "min     0.0"
    assert "<th style='text-align:left'>mean</th><td style='text-align:left'>1.0</td>" in s._repr_html_()


# --------------------------------------------------------------------------------------
# Sampling


def test_big_arrays_are_sampled_and_labelled(monkeypatch):
    monkeypatch.setattr(stats, "EXACT_LIMIT", 1000)
    a = np.arange(100_000, dtype=np.float64).reshape(100, 1000)
    s = array_stats(a)
    assert s.sampled and s.counted == 1000 and s.size == 100_000
    assert ("computed on", "a sample of 1,000 of 100,000 elements (counts are of the sample)") in s.rows()
    # one element from each stretch of 100: the sample spans the whole array
    assert 0 <= s.min < 100 and 99_900 <= s.max < 100_000
    assert s.mean == pytest.approx(a.mean(), rel=0.01)
    assert array_stats(a) == s  # deterministic
    assert not array_stats(a, exact_limit=10**6).sampled


def test_sample_size_bounded_by_both_limits(monkeypatch):
    monkeypatch.setattr(stats, "SAMPLE_SIZE", 50)
    s = array_stats(np.ones(10_000), exact_limit=100)
    assert s.sampled and s.counted == 50
    s = array_stats(np.ones(10_000), exact_limit=20)
    assert s.counted == 20


def test_sample_counts_nan_in_the_sample(monkeypatch):
    a = np.zeros(10_000)
    a[::2] = np.nan
    s = array_stats(a, exact_limit=100)
    assert s.sampled and s.counted == 100
    assert 0 < s.nan_count < 100 and s.inf_count == 0


def test_sample_flat_is_deterministic_spread_and_without_aliasing():
    a = np.arange(64 * 1000).reshape(1000, 64)  # a fixed stride of 64 would pick one column only
    picked = sample_flat(a, 1000)
    assert picked.shape == (1000,) and np.array_equal(picked, sample_flat(a, 1000))
    assert np.all(np.diff(picked) > 0)  # one per stretch, in order
    assert len(np.unique(picked % 64)) > 32
    assert np.array_equal(sample_flat(a, 10**6), a.reshape(-1))


def test_sample_flat_reads_only_the_sampled_elements_of_a_strided_view():
    base = np.arange(10**6, dtype=np.float32).reshape(1000, 1000)
    view = base[::3, ::-2]
    picked = sample_flat(view, 100)
    flat = view.reshape(-1)
    assert all(value in flat for value in picked)


def test_leading_values_copies_little():
    a = np.arange(2 * 3 * 1000).reshape(2, 3, 1000)
    assert np.array_equal(leading_values(a, 5), np.arange(5))
    b = np.arange(1000 * 2).reshape(1000, 2)
    assert np.array_equal(leading_values(b, 5), np.arange(5))
    assert first_values(np.arange(12).reshape(3, 4), 5) == "[0, 1, 2, 3, 4, …]"
    assert first_values(np.arange(3), 5) == "[0, 1, 2]"
    assert first_values(np.arange(3), 3) == "[0, 1, 2]"


# --------------------------------------------------------------------------------------
# CuPy arrays: statistics on the device, only scalars copied


class DeviceArray:
    """A CuPy array stand-in: recognised as CuPy by its type, its values stay on the
    'device' (NumPy refuses to convert it) and every copy to the host is logged."""

    __module__ = "cupy._core.core"
    __array_ufunc__ = None  # NumPy operators defer to ours

    def __init__(self, values, log) -> None:
        self._np, self._log = np.asarray(values), log
        self.device = types.SimpleNamespace(id=1)

    shape = property(lambda self: self._np.shape)
    dtype = property(lambda self: self._np.dtype)
    size = property(lambda self: self._np.size)
    ndim = property(lambda self: self._np.ndim)
    __cuda_array_interface__ = property(lambda self: {"shape": self.shape, "typestr": self.dtype.str})

    def get(self) -> np.ndarray:
        self._log.append(self._np.size)
        return self._np.copy()

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Use .get()")

    def _wrap(self, value):
        return DeviceArray(value, self._log)

    def __getitem__(self, key):
        return self._wrap(self._np[_unwrap(key)])

    def astype(self, dtype):
        return self._wrap(self._np.astype(dtype))

    def reshape(self, *shape):
        return self._wrap(self._np.reshape(*shape))


def _operator(name):
    def apply(self, *others):
        return self._wrap(getattr(self._np, name)(*_unwrap(others)))
    return apply


for _name in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__and__", "__or__", "__xor__",
              "__invert__", "__sub__", "__add__", "__mul__", "__truediv__", "__neg__", "__abs__"):
    setattr(DeviceArray, _name, _operator(_name))


def _unwrap(value):
    if isinstance(value, DeviceArray):
        return value._np
    if isinstance(value, (tuple, list)):
        return type(value)(_unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


class DeviceModule(types.ModuleType):
    """``cupy`` for DeviceArray: NumPy's functions, run 'on the device'."""

    def __init__(self, log) -> None:
        super().__init__("cupy")
        self.log = log

    def __getattr__(self, name):
        attr = getattr(np, name)
        if isinstance(attr, type) or not callable(attr):
            return attr  # dtypes
        return lambda *args, **kwargs: DeviceArray(attr(*_unwrap(args), **_unwrap(kwargs)), self.log)


@pytest.fixture
def device(monkeypatch):
    """Make arrays on the stand-in GPU: ``device(values)``; ``device.log`` lists copies to the host."""
    log: list[int] = []
    monkeypatch.setitem(sys.modules, "cupy", DeviceModule(log))
    make = lambda values: DeviceArray(values, log)  # noqa: E731
    make.log = log
    return make


@pytest.mark.parametrize("values", [
    np.array([[1.5, np.nan, -3.0], [0.0, np.inf, 2.0]], dtype=np.float32),
    np.array([5, -7, 0, 0, 9], dtype=np.int64),
    np.array([True, False, True]),
    np.array([3 + 4j, 0, np.nan], dtype=np.complex128),
])
def test_device_arrays_are_summarised_on_the_device(device, values):
    on_gpu = device(values)
    s = array_stats(on_gpu)
    host = array_stats(values)
    assert s.device == "cuda:1"
    assert {k: v for k, v in vars(s).items() if k != "device"} == {k: v for k, v in vars(host).items() if k != "device"}
    assert device.log and all(n == 1 for n in device.log), device.log  # only scalars came back


def test_device_arrays_sampled_on_the_device(device):
    on_gpu = device(np.arange(100_000, dtype=np.float32).reshape(100, 1000))
    s = array_stats(on_gpu, exact_limit=500)
    assert s.sampled and s.counted == 500 and s.device == "cuda:1"
    assert all(n == 1 for n in device.log)
    assert s == stats.ArrayStats(**{**vars(array_stats(on_gpu._np, exact_limit=500)), "device": "cuda:1"})


def test_device_first_values_copy_only_the_first_values(device):
    on_gpu = device(np.arange(10_000).reshape(100, 100))
    assert first_values(on_gpu, 4) == "[0, 1, 2, 3, …]"
    assert sum(device.log) <= 10


def test_device_pictures_copy_a_bounded_sample(device, monkeypatch):
    monkeypatch.setattr(pictures, "HISTOGRAM_SAMPLE", 1000)
    monkeypatch.setattr(pictures, "HEATMAP_SIDE", 20)
    on_gpu = device(np.random.default_rng(0).normal(size=(200, 300)))
    assert pictures.histogram_png(on_gpu).startswith(PNG_SIGNATURE)
    assert pictures.heatmap_png(on_gpu).startswith(PNG_SIGNATURE)
    assert device.log == [1000, 20 * 20]


# --------------------------------------------------------------------------------------
# Pictures


def decode(png: bytes) -> np.ndarray:
    assert png.startswith(PNG_SIGNATURE)
    return matplotlib.image.imread(io.BytesIO(png), format="png")


@pytest.mark.parametrize("array", [
    np.random.default_rng(0).normal(size=(30, 40)).astype(np.float32),
    np.arange(24, dtype=np.int16).reshape(2, 3, 4),
    np.array([True, False, True]),
    np.array([1 + 1j, 2, np.nan], dtype=np.complex64),
    np.array([[0.5, 1], [2, 4]], dtype=ml_dtypes.bfloat16),
    np.array([7], dtype=np.uint64),
])
def test_histogram_is_a_png(array):
    image = decode(pictures.histogram_png(array))
    assert image.shape == (pictures.FIGSIZE[1] * pictures.DPI, pictures.FIGSIZE[0] * pictures.DPI, 4)
    assert image.std() > 0  # something was drawn


@pytest.mark.parametrize("array", [
    np.zeros(0), nbckpt.MetaArray((3, 3), np.float32), np.full(3, np.nan),
    np.zeros(3, dtype=by_torch_name("bits8").numpy),
])
def test_histogram_without_values_says_so_in_a_png(array):
    assert decode(pictures.histogram_png(array)).std() > 0


def test_heatmap_for_2d_and_higher_only():
    assert pictures.heatmap_png(np.arange(5.0)) is None
    assert pictures.heatmap_png(np.array(1.0)) is None
    assert pictures.heatmap_png(nbckpt.MetaArray((3, 3), np.float32)) is None
    assert pictures.heatmap_png(np.zeros((0, 3))) is None
    assert pictures.heatmap_png(np.zeros((2, 2), dtype=by_torch_name("bits8").numpy)) is None
    for array in (np.eye(4), np.arange(60).reshape(3, 4, 5), np.full((3, 3), 1j), np.array([[np.nan, 1], [2, 3]])):
        decode(pictures.heatmap_png(array))


def test_huge_heatmap_is_downsampled(monkeypatch):
    """A 1000 x 3000 array is drawn from every 63rd row and 188th column: 16 x 16 values,
    exactly those entries, on a picture whose size does not depend on the array's."""
    import matplotlib.axes

    drawn = []
    imshow = matplotlib.axes.Axes.imshow

    def spy(self, data, *args, **kwargs):
        drawn.append(np.ma.getdata(data).copy())
        return imshow(self, data, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", spy)
    monkeypatch.setattr(pictures, "HEATMAP_SIDE", 16)
    array = np.arange(1000 * 3000, dtype=np.float32).reshape(1000, 3000)
    big = decode(pictures.heatmap_png(array))
    small = decode(pictures.heatmap_png(array[:16, :16]))
    assert [d.shape for d in drawn] == [(16, 16), (16, 16)]
    np.testing.assert_array_equal(drawn[0], array[::63, ::188])
    np.testing.assert_array_equal(drawn[1], array[:16, :16])
    assert big.shape == small.shape
    assert big.shape[:2] == (round(pictures.FIGSIZE[1] * pictures.DPI), round(pictures.FIGSIZE[0] * pictures.DPI))


def test_pictures_leave_matplotlib_state_alone():
    # In a fresh interpreter: other tests may have imported pyplot already.
    script = (
        "import sys, numpy as np, matplotlib\n"
        "before = matplotlib.rcParams.copy()\n"
        "from nbckpt.jupyter import pictures\n"
        "pictures.histogram_png(np.arange(10)); pictures.heatmap_png(np.eye(3))\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "assert matplotlib.rcParams.copy() == before, 'rcParams changed'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
