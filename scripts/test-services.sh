#!/usr/bin/env bash
# Runs the given command with the tests pointed at this machine's PostgreSQL and Redis
# when they answer on their standard ports; on a bare machine the variables stay unset
# and the same tests fall back to SQLite and an embedded Redis.
set -euo pipefail
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ -z "${XMLX_TEST_DATABASE_URL:-}" ] && port_open 5432; then
  export XMLX_TEST_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:5432/test"
fi
if [ -z "${XMLX_TEST_REDIS_URL:-}" ] && port_open 6379; then
  export XMLX_TEST_REDIS_URL="redis://127.0.0.1:6379/0"
fi
echo "tests: database=${XMLX_TEST_DATABASE_URL:-sqlite (embedded)} redis=${XMLX_TEST_REDIS_URL:-embedded}"
exec "$@"
