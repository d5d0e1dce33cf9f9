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

# Both units: edge-agent.service for the camera named in agent.env, edge-agent@<camera>.service for one instance
# per camera of agent.yaml. Same sandbox (tests/edge_agent/test_systemd.py holds them equal).
for unit in edge-agent.service edge-agent@.service; do
  install -m 0644 "$here/systemd/$unit" "/etc/systemd/system/$unit"
done
systemctl daemon-reload
echo "installed. Next: copy an edge bundle to /var/lib/edge-agent/models/<name>, set model.path and the MQTT"
echo "broker in /etc/edge-agent/agent.yaml, then, for the camera named in /etc/edge-agent/agent.env:"
echo "  systemctl enable --now edge-agent && journalctl -fu edge-agent"
echo "or one service per camera of agent.yaml (instead of edge-agent.service, never beside it for the same camera):"
echo "  systemctl enable --now edge-agent@gige0 edge-agent@gige1 && journalctl -fu 'edge-agent@*'"
