#!/bin/sh
# Entrypoint of the mosquitto service in docker-compose.yml (eclipse-mosquitto:2 image).
#
# broker/ is mounted read-only at /mosquitto/broker. This script puts together
# /mosquitto/config from it and execs Mosquitto:
#   - mosquitto.conf and acl are copied as they are;
#   - the password file is made now from the environment (no password hashes in
#     the repository): MQTT_INGEST_PASSWORD for svc.ingest and
#     MQTT_HEALTHCHECK_PASSWORD for svc.healthcheck, plus any "user:password"
#     pairs in MQTT_EXTRA_USERS (space-separated), e.g. devices d1 and d2 or a
#     second ingest worker svc.ingest.2, and the "user:password" lines of the file
#     MQTT_USERS_FILE when it exists (the simulated devices' accounts, written by
#     `python -m simulators broker-users`);
#   - certs/ (made by make-dev-certs.sh) is copied when it holds a server
#     certificate; otherwise the TLS listener (8883) is left out, with a warning.
set -eu

# The overrides are for tests/test_broker_config.py, which runs this script outside a container.
src=${BROKER_SRC:-/mosquitto/broker}
conf=${BROKER_CONF:-/mosquitto/config}
data=${BROKER_DATA:-/mosquitto/data}

: "${MQTT_INGEST_PASSWORD:?set MQTT_INGEST_PASSWORD}"
: "${MQTT_HEALTHCHECK_PASSWORD:?set MQTT_HEALTHCHECK_PASSWORD}"

mkdir -p "$conf"
cp "$src/acl" "$conf/acl"

if [ -s "$src/certs/server.crt" ] && [ -s "$src/certs/server.key" ] && [ -s "$src/certs/ca.crt" ]; then
    mkdir -p "$conf/certs"
    cp "$src/certs/ca.crt" "$src/certs/server.crt" "$src/certs/server.key" "$conf/certs/"
    cp "$src/mosquitto.conf" "$conf/mosquitto.conf"
else
    echo "compose-entrypoint: no broker/certs/server.crt; TLS listener 8883 disabled" \
         "(run broker/make-dev-certs.sh to enable it)" >&2
    sed '/^# BEGIN TLS LISTENER/,/^# END TLS LISTENER/d' "$src/mosquitto.conf" > "$conf/mosquitto.conf"
fi

rm -f "$conf/passwd"
touch "$conf/passwd"
chmod 0700 "$conf/passwd"
mosquitto_passwd -b "$conf/passwd" svc.ingest "$MQTT_INGEST_PASSWORD"
mosquitto_passwd -b "$conf/passwd" svc.healthcheck "$MQTT_HEALTHCHECK_PASSWORD"
for pair in ${MQTT_EXTRA_USERS:-}; do
    mosquitto_passwd -b "$conf/passwd" "${pair%%:*}" "${pair#*:}"
done
if [ -n "${MQTT_USERS_FILE:-}" ] && [ -f "$MQTT_USERS_FILE" ]; then
    count=0
    while IFS= read -r pair || [ -n "$pair" ]; do
        [ -n "$pair" ] || continue
        mosquitto_passwd -b "$conf/passwd" "${pair%%:*}" "${pair#*:}"
        count=$((count + 1))
    done < "$MQTT_USERS_FILE"
    echo "compose-entrypoint: $count accounts from $MQTT_USERS_FILE" >&2
fi

if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
    chown -R mosquitto:mosquitto "$conf" "$data"
fi
exec "${MOSQUITTO:-/usr/sbin/mosquitto}" -c "$conf/mosquitto.conf"
