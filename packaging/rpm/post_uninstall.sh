# antibody %postun ($1: 0 = erase, 1 or more = upgrade).
# rpm has no purge: an erase keeps the ledger (/var/log/antibody) and the
# state (/var/lib/antibody), which the package never owned; delete them by
# hand when the audit trail is no longer wanted.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart antibody.service >/dev/null 2>&1 || :
        systemctl try-restart antibody-web.service >/dev/null 2>&1 || :
    fi
fi
