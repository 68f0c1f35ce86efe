"""Lua scripts by SHA on the real Redis, including one the server has forgotten."""

from app.redis_scripts import Script

ECHO = "return {KEYS[1], ARGV[1], #KEYS, #ARGV}"


async def test_a_script_runs_with_its_keys_and_args(redis):
    script = Script(ECHO)
    assert await script(redis, ["k1", "k2"], ["a", 7]) == [b"k1", b"a", 2, 2]


async def test_a_script_the_server_forgot_is_loaded_and_run(redis):
    script = Script(ECHO)
    await script(redis, ["k"], ["v"])
    await redis.script_flush()  # as after a restart or a failover
    assert await redis.script_exists(script.sha) == [False]
    assert await script(redis, ["k"], ["v"]) == [b"k", b"v", 1, 1]
    assert await redis.script_exists(script.sha) == [True]
