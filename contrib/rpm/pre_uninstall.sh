# shellcheck shell=sh
# %preun of the rebouncer RPM ($1: 0 on erase, 1 on upgrade). On erase: stop and disable.
# The configuration (if edited: saved as .rpmsave) and /var/lib/rebouncer stay.
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl disable --now rebouncer.service >/dev/null 2>&1 || :
    else
        service rebouncer stop >/dev/null 2>&1 || :
        if command -v chkconfig >/dev/null 2>&1; then
            chkconfig --del rebouncer || :
        fi
    fi
fi
