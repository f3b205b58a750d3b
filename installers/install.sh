#!/bin/sh
# Installs the Porthole guest agent on a systemd distribution from this
# unpacked tarball (the same files as the .deb).
#   sudo ./install.sh                       install or upgrade
#   sudo ./install.sh --uninstall [--purge] remove (--purge: also /etc/porthole, /var/lib/porthole)
# An existing /etc/porthole/agent.conf is never overwritten: a changed default
# is put beside it as agent.conf.new.
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
CONF=/etc/porthole/agent.conf

if [ "$(id -u)" != 0 ]; then
  echo "install.sh: must run as root" >&2
  exit 1
fi

running_systemd() { [ -d /run/systemd/system ]; }

case "$1" in
  "")
    if ! command -v systemctl >/dev/null; then
      echo "install.sh: this installer needs systemd (systemctl not found)" >&2
      exit 1
    fi
    # Replace the old tree wholesale, so files dropped by a newer version do not linger.
    rm -rf /usr/lib/porthole.new
    cp -a "$HERE/files/usr/lib/porthole" /usr/lib/porthole.new
    rm -rf /usr/lib/porthole.old
    if [ -d /usr/lib/porthole ]; then mv /usr/lib/porthole /usr/lib/porthole.old; fi
    mv /usr/lib/porthole.new /usr/lib/porthole
    rm -rf /usr/lib/porthole.old
    ln -sfn ../lib/porthole/porthole-agent /usr/sbin/porthole-agent
    install -D -m 0644 "$HERE/files/usr/lib/systemd/system/porthole-agent.service" /usr/lib/systemd/system/porthole-agent.service
    install -D -m 0644 "$HERE/files/usr/lib/udev/rules.d/60-porthole-agent.rules" /usr/lib/udev/rules.d/60-porthole-agent.rules
    install -d -m 0755 /etc/porthole
    if [ ! -e "$CONF" ]; then
      install -m 0644 "$HERE/files$CONF" "$CONF"
    elif ! cmp -s "$HERE/files$CONF" "$CONF"; then
      install -m 0644 "$HERE/files$CONF" "$CONF.new"
      echo "install.sh: kept your $CONF; the shipped default is in $CONF.new"
    fi
    install -d -m 0700 /var/lib/porthole
    if running_systemd; then /usr/lib/porthole/porthole-service activate; fi
    echo "install.sh: installed $(/usr/sbin/porthole-agent --version)"
    ;;
  --uninstall)
    if running_systemd && [ -x /usr/lib/porthole/porthole-service ]; then /usr/lib/porthole/porthole-service deactivate; fi
    rm -rf /usr/lib/porthole /usr/sbin/porthole-agent \
      /usr/lib/systemd/system/porthole-agent.service /usr/lib/udev/rules.d/60-porthole-agent.rules
    if running_systemd; then
      systemctl --system daemon-reload || true
      udevadm control --reload-rules || true
    fi
    if [ "$2" = --purge ]; then rm -rf /etc/porthole /var/lib/porthole; fi
    echo "install.sh: removed porthole-agent"
    ;;
  *)
    echo "usage: $0 [--uninstall [--purge]]" >&2
    exit 2
    ;;
esac
