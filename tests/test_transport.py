import torch

from vroll.strategy.transport import pack_bucket, unpack_bucket


def test_buckets_round_trip_every_dtype_and_shape():
    bucket = [("a", torch.randn(3, 4)), ("b", torch.randn(5).to(torch.bfloat16)), ("c", torch.randn(2, 2).half()),
              ("d", torch.randn(4, 3).t())]  # non-contiguous
    arrays, specs = pack_bucket(bucket)
    for (name, t), (n2, t2) in zip(bucket, unpack_bucket(arrays, specs)):
        assert name == n2 and t2.dtype == t.dtype and t2.shape == t.shape and torch.equal(t2, t)


def test_packing_does_not_copy_contiguous_tensors():
    t = torch.randn(1000)
    arrays, _ = pack_bucket([("w", t)])
    assert arrays[0].ctypes.data == t.data_ptr()
