# antibody %preun ($1: 0 = erase, 1 or more = upgrade).
# Erase: stop and disable the service. An upgrade leaves it running;
# %postun restarts it on the new binary.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now antibody.service >/dev/null 2>&1 || :
    systemctl disable --now antibody-web.service >/dev/null 2>&1 || :
fi
