"""geoattn.memory counts the bytes of live tensors exactly and deterministically."""
import pytest
import torch

import geoattn
from geoattn.memory import peak_tensor_memory


def test_counts_outputs_views_and_frees():
    x = torch.randn(1000)  # created outside: not counted

    def f():
        y = x.exp()  # 4000 bytes
        z = y * 2  # 4000 more: peak 8000
        del y
        return z.view(10, 100)  # a view shares z's storage

    measured = peak_tensor_memory(f)
    assert measured.peak_bytes == 8000
    assert measured.retained_bytes == 4000
    assert measured.result.shape == (10, 100)


def test_tensors_saved_for_backward_stay_counted():
    x = torch.randn(1000, requires_grad=True)

    def f():
        y = x.exp()  # exp saves its output for the backward pass
        s = (y * 3).sum()
        del y
        return s

    measured = peak_tensor_memory(f)
    assert measured.retained_bytes == 4000 + 4  # y is still held by the graph, plus the scalar


def test_chunked_uses_less_than_naive_and_is_deterministic():
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(1, 256, 2, 3, generator=gen) for _ in range(5)] + [torch.rand(2, generator=gen)] * 2
    with torch.no_grad():
        naive = [peak_tensor_memory(geoattn.geometric_attention, *inputs, impl="naive").peak_bytes for _ in range(2)]
        chunked = peak_tensor_memory(geoattn.geometric_attention, *inputs, impl="chunked", block_size=16).peak_bytes
    assert naive[0] == naive[1]
    assert naive[0] >= 2 * 256 * 256 * 4 * 3  # at least the (L, L, 3) differences of both heads
    assert chunked < naive[0] / 5


@pytest.mark.parametrize("training", [False, True])
def test_naive_keeps_no_more_square_tensors_than_esm(training):
    # ESM's layer keeps 5 (inference) and 11.25 (training) fp32 numbers per (head, query,
    # key) alive at its peak (counted in chapter 5); the naive reference must be as lean:
    # 4 in inference (the (L, L, 3) differences and their norm), 11.25 in training, plus
    # a few O(L) vectors.
    length, heads = 128, 4
    inputs = geoattn.random_geometric_inputs(1, length, heads, requires_grad=training)

    def run():
        with torch.set_grad_enabled(training):
            out = geoattn.geometric_attention(*inputs, impl="naive")
            if training:
                out.sum().backward()

    per_pair = peak_tensor_memory(run).peak_bytes / (4 * heads * length**2)
    assert per_pair < (11.5 if training else 4.25), per_pair


def test_subclass_hooks_see_each_storage_once():
    from geoattn.memory import LiveTensorBytes

    class Log(LiveTensorBytes):
        def __init__(self):
            super().__init__()
            self.events = []

        def on_new(self, key, tensor, nbytes):
            self.events.append(("new", self.op, tuple(tensor.shape), nbytes, self.current))

        def on_free(self, key, nbytes):
            self.events.append(("free", nbytes, self.current))

    x = torch.randn(10, 10)
    with Log() as mode:
        y = x.exp()
        z = y.t()  # a view: no new storage
        w = (y * 2).sum()
        del y, z, w
    # y * 2 is freed only once sum() has returned: Python holds the temporary until then
    assert mode.events == [("new", "exp", (10, 10), 400, 400), ("new", "mul", (10, 10), 400, 800),
                           ("new", "sum", (), 4, 804), ("free", 400, 804), ("free", 400, 404),
                           ("free", 4, 4)]


def test_rejects_a_non_callable():
    with pytest.raises(ValueError, match="fn"):
        peak_tensor_memory(3)


def test_inputs_and_views_of_inputs_are_never_counted():
    x = torch.randn(1024, 1024)  # 4 MiB, created before the measurement
    assert peak_tensor_memory(lambda: x.t()).peak_bytes == 0
    assert peak_tensor_memory(torch.t, x).peak_bytes == 0
    assert peak_tensor_memory(lambda: x.t().t()[3:].reshape(-1)).peak_bytes == 0
    assert peak_tensor_memory(lambda: x.add_(0.0)).peak_bytes == 0  # in place: no new storage
    # A copy is new memory, once; a view of it adds nothing.
    assert peak_tensor_memory(lambda: x.t().contiguous()).peak_bytes == 4 * 2**20
    copied = peak_tensor_memory(lambda: (lambda y: (y, y.t(), y[::2]))(x * 2))
    assert copied.peak_bytes == copied.retained_bytes == 4 * 2**20


def test_a_view_of_a_new_tensor_keeps_it_alive():
    x = torch.randn(1000)

    def f():
        y = x * 2  # 4000 bytes
        v = y[:10]
        del y
        return v  # the view keeps y's whole storage alive

    assert peak_tensor_memory(f).retained_bytes == 4000
