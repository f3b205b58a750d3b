#!/bin/sh
# Shared by the .deb maintainer scripts and install.sh (tarball):
#   porthole-service activate    load the unit and udev rule; (re)start the
#                                agent when the Porthole port is present
#   porthole-service deactivate  stop the agent
set -e
PORT=/dev/virtio-ports/org.porthole.agent.0

case "$1" in
  activate)
    systemctl --system daemon-reload
    udevadm control --reload-rules || true
    # Replay the port's "add" so udev names it and tags it for systemd now,
    # not only at the next boot.
    udevadm trigger --subsystem-match=virtio-ports --action=add || true
    udevadm settle --timeout=10 || true
    if [ -e "$PORT" ]; then
      # restart picks up a new executable after an upgrade; starts it otherwise.
      systemctl restart porthole-agent.service
    else
      echo "porthole-agent: no virtio-serial port org.porthole.agent.0 in this VM; the agent starts when the host adds it" >&2
    fi
    ;;
  deactivate)
    systemctl stop porthole-agent.service || true
    ;;
  *)
    echo "usage: $0 activate|deactivate" >&2
    exit 2
    ;;
esac
