#!/usr/bin/env bash
# The steps of docs/cluster.md on one machine: three "hosts" on 127.0.0.2, .3 and .4 (Linux routes all
# of 127.0.0.0/8 to loopback), each with its own node.toml and data folder, the default ports, one
# Redis. CI runs this script (tests/cluster/test_cluster_guide.py), so the guide cannot rot.
#
#   bash docs/cluster-walkthrough.sh              # uses `cynode` and `redis-server` from the PATH
#   CYNODE=.venv/bin/cynode bash docs/cluster-walkthrough.sh
#
# Settings (environment): CYNODE (the cynode command), WORK (a scratch folder; default: a new temp
# folder, removed at the end unless KEEP=1), MODELS_DIR (converted models, shared by the three nodes),
# REDIS_PORT (default 6391), BACKEND (default auto: the built-in model on the best engine here).
set -euo pipefail

CYNODE=${CYNODE:-cynode}
WORK=${WORK:-$(mktemp -d)}
MODELS_DIR=${MODELS_DIR:-$WORK/models}
REDIS_PORT=${REDIS_PORT:-6391}
BACKEND=${BACKEND:-auto}
mkdir -p "$WORK" "$MODELS_DIR"
declare -A HOST=([a]=127.0.0.2 [b]=127.0.0.3 [c]=127.0.0.4)
declare -A PID=()

step() { printf '\n== %s\n' "$*"; }
fail() { echo "walkthrough failed: $*" >&2; exit 1; }

cleanup() {
  for n in "${!PID[@]}"; do kill -TERM "${PID[$n]}" 2>/dev/null || true; done
  for n in "${!PID[@]}"; do wait "${PID[$n]}" 2>/dev/null || true; done
  redis-cli -h 127.0.0.2 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  [[ ${KEEP:-0} == 1 ]] || rm -rf "$WORK" 2>/dev/null || true
}
trap cleanup EXIT

# wait_until SECONDS WHAT COMMAND...: run COMMAND until it succeeds, or fail naming WHAT.
wait_until() {
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null; do
    ((SECONDS < deadline)) || { tail -n 30 "$WORK"/*/cynode.log >&2 || true; fail "$what (after ${limit}s)"; }
    sleep 0.5
  done
}

start_node() {  # start_node NAME: `systemctl start cynode` on that host
  "$CYNODE" run -c "$WORK/$1/node.toml" >>"$WORK/$1/cynode.log" 2>&1 &
  PID[$1]=$!
}

ready() {  # ready NAME: is that host's node serving? (fails the walkthrough at once if it exited)
  kill -0 "${PID[$1]}" 2>/dev/null || { tail -n 30 "$WORK/$1/cynode.log" >&2; fail "the node on $1 exited"; }
  curl -sf "http://${HOST[$1]}:9090/readyz"
}

member_state() {  # member_state SEEN_FROM NAME STATE: does SEEN_FROM see NAME in STATE?
  "$CYNODE" members -c "$WORK/$1/node.toml" --json | python3 -c \
    'import json,sys; m={x["id"]: x["state"] for x in json.load(sys.stdin)["members"]}; sys.exit(m.get(sys.argv[1]) != sys.argv[2])' "$2" "$3"
}

chat() {  # chat URL: ask the question, print the answer, fail unless it names Paris
  local answer
  answer=$(curl -sf "$1/v1/chat/completions" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -H 'Cache-Control: no-cache' \
    -d '{"model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 24,
         "messages": [{"role": "user", "content": "What is the capital of France?"}]}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])') \
    || fail "no answer from $1"
  echo "$1 answered: $answer"
  [[ $answer == *Paris* ]] || fail "the answer from $1 does not name Paris"
}

step "1. Redis, on host a (any Redis 6+ that every host can reach)"
redis-server --bind 127.0.0.2 --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes \
  --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log"
wait_until 10 "Redis to answer" redis-cli -h 127.0.0.2 -p "$REDIS_PORT" ping

step "2. One cluster key, copied to every host"
mkdir -p "$WORK"/{a,b,c}
"$CYNODE" keygen >"$WORK/cluster.key"
for n in a b c; do install -m 600 "$WORK/cluster.key" "$WORK/$n/cluster.key"; done

step "3. A node.toml per host"
# a and b: gateway + coordinator + worker; c: a worker only. One machine here, so each "host" binds
# its own loopback address; on real hosts leave the listen addresses at their defaults (0.0.0.0) and
# set [node] advertise to the address peers should use.
for n in a b c; do
  ip=${HOST[$n]}
  roles='["gateway", "coordinator", "worker"]'; [[ $n == c ]] && roles='["worker"]'
  seeds='[]'; [[ $n != a ]] && seeds='["127.0.0.2:7946"]'
  cat >"$WORK/$n/node.toml" <<EOF
[node]
id = "$n"
roles = $roles
data_dir = "$WORK/$n"
advertise = "$ip"

[cluster]
name = "walkthrough"
key_file = "$WORK/$n/cluster.key"
seeds = $seeds

[gossip]
bind = "$ip:7946"

[redis]
url = "redis://127.0.0.2:$REDIS_PORT/0"

[gateway]
listen = "$ip:8080"

[coordinator]
listen = "$ip:50050"

[worker]
listen = "$ip:50051"
backend = "$BACKEND"
models_dir = "$MODELS_DIR"

[metrics]
listen = "$ip:9090"
EOF
  "$CYNODE" config check "$WORK/$n/node.toml" >/dev/null || fail "node.toml of $n"
done

step "4. Start host a; it writes the first admin API key"
start_node a
wait_until 300 "a to be ready" ready a
KEY=$(sed -n 's/^key = "\(.*\)"/\1/p' "$WORK/a/api-keys.toml" | head -n 1)  # [gateway] api_keys_file's default
[[ -n $KEY ]] || fail "no admin key in a's api-keys.toml"
# Every gateway host needs the same API-key file (or keys created at run time, which live in Redis).
install -m 600 "$WORK/a/api-keys.toml" "$WORK/b/api-keys.toml"

step "5. Start hosts b and c; they join through a's gossip address"
start_node b
start_node c
wait_until 300 "b to be ready" ready b
wait_until 300 "c to be ready" ready c
for n in b c; do wait_until 60 "a to see $n alive" member_state a "$n" alive; done

step "6. Who is in the cluster, and who leads"
"$CYNODE" members -c "$WORK/a/node.toml" --key "$KEY"
"$CYNODE" status -c "$WORK/a/node.toml" --key "$KEY"

step "7. A chat through any node (c has no gateway: it forwards to one and says so in X-Cynode-Forwarded-By)"
chat http://127.0.0.2:8080
chat http://127.0.0.3:8080
chat http://127.0.0.4:8080

step "8. A worker leaves (systemctl stop cynode on c) and joins again"
kill -TERM "${PID[c]}"; wait "${PID[c]}" || fail "c did not stop cleanly"; unset 'PID[c]'
wait_until 30 "a to see c leave" member_state a c left
"$CYNODE" members -c "$WORK/a/node.toml" --key "$KEY"
start_node c
wait_until 300 "c to be ready again" ready c
wait_until 60 "a to see c alive again" member_state a c alive
"$CYNODE" members -c "$WORK/a/node.toml" --key "$KEY"

step "done: three hosts, one cluster"
