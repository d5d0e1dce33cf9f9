#!/usr/bin/env bash
# Installs the edge agent as a systemd service on a factory PC (run as root from a checkout of this repo).
# The factory PC gets only the agent extras: no torch, no trainer dependencies.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
prefix=/opt/edge-agent

id -u edge-agent >/dev/null 2>&1 || useradd --system --home-dir /var/lib/edge-agent --shell /usr/sbin/nologin edge-agent
# GenICam USB3 and GigE cameras: the vendor's udev rules usually grant the 'video' or 'plugdev' group.
for group in video plugdev; do getent group "$group" >/dev/null && usermod -aG "$group" edge-agent; done

python3 -m venv "$prefix/venv"
"$prefix/venv/bin/pip" install --quiet "$here[agent]"
install -m 0644 "$here/README.md" "$prefix/README.md"

install -d -m 0755 /etc/edge-agent
[ -f /etc/edge-agent/agent.yaml ] || install -m 0644 "$here/configs/factory.yaml" /etc/edge-agent/agent.yaml
[ -f /etc/edge-agent/agent.env ] || echo "EDGE_AGENT_CAMERA=gige0" > /etc/edge-agent/agent.env
install -d -o edge-agent -g edge-agent /var/lib/edge-agent/models

install -m 0644 "$here/systemd/edge-agent.service" /etc/systemd/system/edge-agent.service
systemctl daemon-reload
echo "installed. Next: copy an edge bundle to /var/lib/edge-agent/models/<name>, set model.path and the MQTT"
echo "broker in /etc/edge-agent/agent.yaml, then: systemctl enable --now edge-agent && journalctl -fu edge-agent"
