#!/usr/bin/env bash
# Make a development CA, a server certificate for Mosquitto's TLS listener (8883)
# and, optionally, client certificates, with openssl. For development and demos
# only: production brokers use certificates from the operator's own CA.
#
#   broker/make-dev-certs.sh                      # CA + server cert into broker/certs/
#   broker/make-dev-certs.sh --client d1          # ... plus a client cert for device d1
#   broker/make-dev-certs.sh --out DIR --name broker.example.org --ip 10.0.0.5
#
# The CA is kept when it already exists (so issued client certs stay valid);
# the server certificate is made anew each run. broker/certs/ is git-ignored.
set -euo pipefail

out="$(cd "$(dirname "$0")" && pwd)/certs"
names=(localhost mosquitto)
ips=(127.0.0.1)
clients=()
days=825

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    echo "options: --out DIR, --name DNS (repeatable), --ip ADDR (repeatable),"
    echo "         --client NAME (repeatable), --days N (server/client validity)"
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        -o|--out) out="$2"; shift 2 ;;
        -n|--name) names+=("$2"); shift 2 ;;
        --ip) ips+=("$2"); shift 2 ;;
        -c|--client) clients+=("$2"); shift 2 ;;
        --days) days="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done

command -v openssl >/dev/null || { echo "openssl is not installed" >&2; exit 1; }
mkdir -p "$out"
umask 077
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

ec_key=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)

if [[ ! -s "$out/ca.crt" || ! -s "$out/ca.key" ]]; then
    openssl req -x509 -new "${ec_key[@]}" -sha256 -days 3650 \
        -keyout "$out/ca.key" -out "$out/ca.crt" \
        -subj "/O=farm-iot-collector/CN=farm-iot-collector dev CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    echo "made $out/ca.crt (development CA)"
fi

# sign NAME EXTFILE: $tmp/NAME.csr -> $out/NAME.crt
sign() {
    openssl x509 -req -sha256 -days "$days" -in "$tmp/$1.csr" \
        -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial -CAserial "$out/ca.srl" \
        -out "$out/$1.crt" -extfile "$2" 2>/dev/null
}

san=""
for name in "${names[@]}"; do san+="DNS:$name,"; done
for ip in "${ips[@]}"; do san+="IP:$ip,"; done
cat > "$tmp/server.ext" <<EOF
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=${san%,}
EOF
openssl req -new "${ec_key[@]}" -keyout "$out/server.key" -out "$tmp/server.csr" \
    -subj "/O=farm-iot-collector/CN=${names[0]}" 2>/dev/null
sign server "$tmp/server.ext"
echo "made $out/server.crt for ${san%,}"

for client in "${clients[@]}"; do
    cat > "$tmp/client.ext" <<EOF
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
EOF
    openssl req -new "${ec_key[@]}" -keyout "$out/client-$client.key" \
        -out "$tmp/client-$client.csr" -subj "/O=farm-iot-collector/CN=$client" 2>/dev/null
    sign "client-$client" "$tmp/client.ext"
    echo "made $out/client-$client.crt (CN=$client)"
done

# The certificates are public; the CA key stays with the operator.
chmod 644 "$out"/*.crt
