#!/bin/bash
# TD1 user-data: installs Node.js and runs the course's plain `http` sample app under systemd,
# so it survives a reboot (the course started it with nohup). Rendered by labctl: {{ port }}
# and {{ message }} come from the lab's parameters (labs/td1.yaml).
#
# Values are written to a settings file through a quoted heredoc and read by the app itself:
# nothing from a parameter is ever interpreted by a shell.
set -euo pipefail

if ! command -v node >/dev/null 2>&1; then
  if command -v dnf >/dev/null 2>&1; then
    dnf install -y nodejs
  else
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs
  fi
fi

mkdir -p /opt/sample-app
cat > /etc/sample-app.conf <<'SETTINGS'
PORT={{ port }}
MESSAGE={{ message }}
SETTINGS

cat > /opt/sample-app/app.js <<'APP'
const fs = require('fs');
const http = require('http');

const settings = {};
for (const line of fs.readFileSync('/etc/sample-app.conf', 'utf8').split('\n')) {
  const i = line.indexOf('=');
  if (i > 0) settings[line.slice(0, i)] = line.slice(i + 1);
}
const port = Number(settings.PORT) || 80;

http
  .createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end(`${settings.MESSAGE}\n`);
  })
  .listen(port, () => console.log(`sample-app listening on port ${port}`));
APP

cat > /etc/systemd/system/sample-app.service <<'UNIT'
[Unit]
Description=TD1 sample app
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/bin/env node /opt/sample-app/app.js
Restart=always
DynamicUser=yes
AmbientCapabilities=CAP_NET_BIND_SERVICE

[Install]
WantedBy=multi-user.target
UNIT

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now sample-app.service
else
  # No systemd as PID 1 (a container running this script as a test): start it detached.
  nohup node /opt/sample-app/app.js >/var/log/sample-app.log 2>&1 &
fi
