# Sourced by the benchmark scripts: starts one etcd member with its defaults on free loopback
# ports, in a temporary directory, stopped and removed when the script exits. Sets `client`
# (its client port) and `dir` (the temporary directory, for the caller's files too).
etcd=$(command -v etcd || true)
[[ -n $etcd ]] || { echo "etcd is not installed: apt-get install -y etcd-server" >&2; exit 1; }
dir=$(mktemp -d)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
client=$(port); peer=$(port)
"$etcd" --name m0 --data-dir "$dir/etcd" --log-level error \
  --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
  --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
  --initial-cluster "m0=http://127.0.0.1:$peer" --auto-compaction-retention 5m >"$dir/etcd.log" 2>&1 &
etcd_pid=$!
# Under `set -e`, waiting on the killed member returns 143: that is how it ends, not a failure.
trap 'kill $etcd_pid 2>/dev/null; wait $etcd_pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$client") 2>/dev/null && break
  sleep 0.1
done
