"""sagakit's benchmark harness (`sagakit bench`): throughput, latency and CPU of the
place-order saga, always next to a raw aiokafka baseline measured on the same broker.

Not part of the test suite: numbers from one machine are reported as ratios, never asserted.
"""
