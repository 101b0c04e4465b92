"""The embedded Redis starts on a private port, answers, and stops without a trace."""

from pathlib import Path

import redis

from xmlx.embedded_redis import EmbeddedRedis, free_port, redis_server_binary


def test_binary_is_found() -> None:
    assert Path(redis_server_binary()).exists()


def test_start_answer_stop(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    with server:
        client = redis.Redis.from_url(server.url)
        client.rpush("q", b"m1")
        assert client.lrange("q", 0, -1) == [b"m1"]
        pid = server.process.pid if server.process else None
    assert pid is not None
    assert server.process is None
    # The port is free again: nothing lingers after stop().
    again = EmbeddedRedis(tmp_path / "redis2", port=server.port).start()
    again.stop()


def test_persist_keeps_data_across_restart(tmp_path: Path) -> None:
    port = free_port()
    server = EmbeddedRedis(tmp_path / "redis", port=port, persist=True).start()
    redis.Redis.from_url(server.url).rpush("q", b"kept")
    server.stop()
    server.start()
    try:
        assert redis.Redis.from_url(server.url).lrange("q", 0, -1) == [b"kept"]
    finally:
        server.stop()
