#!/bin/sh
# Antibody fleet: a CA of the fleet's own, and a key and certificate signed
# by it for the collector and for each host named on the command line:
#   make-certificates.sh collector host1 host2 host3
# Run it where the CA key may live (not on a host); it writes NAME.key and
# NAME.pem for each NAME, and ca.pem, into the current directory.
set -eu
# Keys (and the CA's) readable by whoever runs this, no one else.
umask 077
[ -f ca.key ] || openssl req -x509 -newkey rsa:2048 -nodes -days 3650 \
    -subj /CN=antibody-fleet-ca -keyout ca.key -out ca.pem 2>/dev/null
for name in "$@"; do
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$name" \
        -addext "subjectAltName=DNS:$name" \
        -addext "basicConstraints=critical,CA:FALSE" \
        -addext "keyUsage=critical,digitalSignature,keyEncipherment" \
        -addext "extendedKeyUsage=serverAuth,clientAuth" -keyout "$name.key" -out "$name.csr" 2>/dev/null
    openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -days 3650 -copy_extensions copy -out "$name.pem" 2>/dev/null
    rm -f "$name.csr"
done
