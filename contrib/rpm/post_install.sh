# shellcheck shell=sh
# %post of the rebouncer RPM ($1: 1 on install, 2 on upgrade).
# The rebouncer user and its directories: systemd-sysusers/tmpfiles where there are,
# the shadow tools elsewhere (hosts running the init script).
if [ -x /usr/bin/systemd-sysusers ]; then
    /usr/bin/systemd-sysusers rebouncer.conf || :
fi
if ! getent passwd rebouncer >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/rebouncer --no-create-home \
        --shell /sbin/nologin --comment "rebouncer daemon" rebouncer
fi
if [ -x /usr/bin/systemd-tmpfiles ]; then
    /usr/bin/systemd-tmpfiles --create rebouncer.conf || :
fi
for dir in /var/lib/rebouncer /var/log/rebouncer; do
    [ -d "$dir" ] || install -d -m 0750 -o rebouncer -g rebouncer "$dir"
done
if [ -d /run/systemd/system ]; then
    # Enabled on first install (not started: the configuration needs filling in first).
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl enable rebouncer.service >/dev/null 2>&1 || :
    fi
elif [ "$1" -eq 1 ] && command -v chkconfig >/dev/null 2>&1; then
    chkconfig --add rebouncer || :
fi
