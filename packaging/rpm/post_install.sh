# antibody %post ($1: 1 = first install, 2 or more = upgrade).
# The same steps as packaging/debian/postinst: group and directories, then
# enable and start on a first install; an upgrade restarts in %postun.
systemd-sysusers /usr/lib/sysusers.d/antibody.conf || :
systemd-tmpfiles --create /usr/lib/tmpfiles.d/antibody.conf >/dev/null 2>&1 || :
journalctl --update-catalog >/dev/null 2>&1 || :
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl enable --now antibody.service >/dev/null 2>&1 || :
    fi
fi
