#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis answer for the tests and benchmarks, starting them when they do not, and prints
# the `export` lines that point the tests at them (use: eval "$(scripts/test-services.sh)"). Messages go to stderr.
#
# TEST_DATABASE_URL / TEST_REDIS_URL, when set, are used as they are and nothing is started: that is how to run
# the suite against servers of your own. Otherwise the local Debian cluster is started (pg_ctlcluster) and a
# password role companion_test (CREATEDB, CREATEROLE: each test run makes its own database) is created, and a
# redis-server is started on 127.0.0.1:6379 if nothing answers there.
set -euo pipefail

say() { echo "test-services: $*" >&2; }

if [ -n "${TEST_DATABASE_URL:-}" ]; then
  pg_url=$TEST_DATABASE_URL
else
  pg_url=postgresql://companion_test:companion_test@127.0.0.1:5432/postgres
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    command -v pg_lsclusters >/dev/null || { say "PostgreSQL is not answering on 127.0.0.1:5432 and pg_lsclusters is missing; set TEST_DATABASE_URL"; exit 1; }
    read -r version cluster _ < <(pg_lsclusters -h | head -n 1) || true
    if [ -z "${version:-}" ]; then
      version=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
      cluster=main
      say "creating PostgreSQL cluster $version/$cluster"
      pg_createcluster "$version" "$cluster" >&2
    fi
    say "starting PostgreSQL $version/$cluster"
    pg_ctlcluster "$version" "$cluster" start >&2
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
  fi
  if ! PGCONNECT_TIMEOUT=5 psql "$pg_url" -Atqc "select 1" >/dev/null 2>&1; then
    say "creating the role companion_test"
    runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qc "
      do \$\$ begin
        if not exists (select 1 from pg_roles where rolname = 'companion_test') then
          create role companion_test login password 'companion_test' createdb createrole;
        else
          alter role companion_test login password 'companion_test' createdb createrole;
        end if;
      end \$\$;" >&2
  fi
fi

if [ -n "${TEST_REDIS_URL:-}" ]; then
  redis_url=$TEST_REDIS_URL
else
  redis_url=redis://127.0.0.1:6379/0
  if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    say "starting redis-server on 127.0.0.1:6379"
    redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save "" --appendonly no \
      --dir /tmp --logfile /tmp/companion-redis-6379.log >&2
    for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG && break; sleep 0.2; done
  fi
fi

echo "export TEST_DATABASE_URL='$pg_url'"
echo "export TEST_REDIS_URL='$redis_url'"
