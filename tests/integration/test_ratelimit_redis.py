"""Issue 6: the rate limit lives in Redis, so every worker shares one bucket per provider account."""

import threading

import redis

from notifier.ratelimit import RedisTokenBucket


def test_workers_sharing_a_redis_bucket_are_queued_within_the_rate(redis_url, key_prefix):
    client = redis.Redis.from_url(redis_url)
    rate, burst, total = 100.0, 10.0, 200
    waits: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        bucket = RedisTokenBucket(redis.Redis.from_url(redis_url), f"{key_prefix}:rate:sms", rate_per_s=rate,
                                  burst=burst)
        for _ in range(total // 4):
            wait = bucket.reserve()
            with lock:
                waits.append(wait)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    waits.sort()
    assert len(waits) == total
    # the k-th token is never available before (k - burst) / rate: the rate is never exceeded
    elapsed_allowance = 0.5  # the reservations themselves took some time, during which tokens refilled
    for k, wait in enumerate(waits, start=1):
        assert wait >= (k - burst) / rate - elapsed_allowance
    assert waits[-1] <= (total - burst) / rate + 0.05  # and nobody waits longer than their share
    assert client.exists(f"{key_prefix}:rate:sms")
