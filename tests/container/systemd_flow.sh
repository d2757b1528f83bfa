#!/bin/sh
# Inside a systemd container: install, pair, run via ced and the API, restart, run again, uninstall.
set -eu
step() { echo "== $*"; }
wait_port() { python3 - "$1" <<'PY'
import socket, sys, time
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close(); sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(1)
PY
}
api() { python3 - "$@" <<'PY'
import json, sys, urllib.request
request = urllib.request.Request("http://127.0.0.1:7445" + sys.argv[1], data=sys.argv[2].encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
print(urllib.request.urlopen(request, timeout=60).read().decode())
PY
}
host=$(hostname)
step install
python3 /root/ctrl-exec.pyz install --role dispatcher --role agent
python3 /root/ctrl-exec.pyz install --role dispatcher --role agent | grep -qx "nothing to do: this host is already as asked"
systemd-analyze verify /etc/systemd/system/ctrl-exec-agent.service /etc/systemd/system/ctrl-exec-api.service
step pki
ced setup-ca
ced setup-ctrl-exec
sed -i 's/^api_auth_default = "deny"/api_auth_default = "allow"/' /etc/ctrl-exec/ctrl-exec.toml
step pair
ced pairing-mode --timeout 300 </dev/null >/tmp/pairing-mode.log 2>&1 &
wait_port 7444
ctrl-exec-agent request-pairing --dispatcher 127.0.0.1 --background </dev/null >/tmp/request.log 2>&1
reqid=$(ced list-requests --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["reqid"])')
ced approve "$reqid"
n=0; until ctrl-exec-agent paired >/dev/null 2>&1; do n=$((n+1)); [ $n -lt 300 ] || exit 1; sleep 0.2; done
ced pairing-mode stop || true
step script
printf '#!/bin/sh\necho "hello $*"\n' > /opt/ctrl-exec-scripts/hello
chown root:ctrl-exec-agent /opt/ctrl-exec-scripts/hello && chmod 0750 /opt/ctrl-exec-scripts/hello
echo 'hello = "/opt/ctrl-exec-scripts/hello"' >> /etc/ctrl-exec-agent/scripts.toml
step start
systemctl enable --now ctrl-exec-agent.service ctrl-exec-api.service
for round in 1 2; do
  step "run $round"
  systemctl is-active ctrl-exec-agent.service ctrl-exec-api.service
  # "active" is as soon as the process runs; serving comes a moment later
  wait_port 7445
  n=0; until ctrl-exec-agent self-ping >/dev/null 2>&1; do n=$((n+1)); [ $n -lt 300 ] || exit 1; sleep 0.2; done
  ced run "$host" hello -- "round $round" | tee /tmp/ced-run.out
  grep -qx "hello round $round" /tmp/ced-run.out
  api /run "{\"hosts\": [\"$host\"], \"script\": \"hello\", \"args\": [\"api $round\"]}" | tee /tmp/api.out
  grep -q "hello api $round" /tmp/api.out
  if [ $round = 1 ]; then
    step restart
    systemctl restart ctrl-exec-agent.service ctrl-exec-api.service
  fi
done
step uninstall
python3 /root/ctrl-exec.pyz install --role dispatcher --role agent --uninstall
test ! -e /etc/systemd/system/ctrl-exec-agent.service
test ! -e /usr/local/bin/ced
test -s /etc/ctrl-exec/ca.key && test -s /etc/ctrl-exec-agent/agent.crt
! systemctl is-active ctrl-exec-agent.service
echo FLOW-OK
