#!/bin/sh
# Entrypoint of the mosquitto service in docker-compose.yml (eclipse-mosquitto:2 image).
#
# broker/ is mounted read-only at /mosquitto/broker. This script puts together
# /mosquitto/config from it and execs Mosquitto:
#   - mosquitto.conf and acl are copied as they are;
#   - the password file ($MQTT_PASSWD_FILE, default $conf/passwd) is made when
#     missing and kept otherwise (a volume in compose: devices provisioned through
#     the API survive restarts); the accounts from the environment are set in it at
#     every start (no password hashes in the repository): MQTT_INGEST_PASSWORD for
#     svc.ingest and MQTT_HEALTHCHECK_PASSWORD for svc.healthcheck, plus any
#     "user:password" pairs in MQTT_EXTRA_USERS (space-separated), e.g. devices d1
#     and d2 or a second ingest worker svc.ingest.2, and the "user:password" lines of
#     the file MQTT_USERS_FILE when it exists (the simulated devices' accounts,
#     written by `python -m simulators broker-users`);
#   - the file is owned by mosquitto and, with MQTT_PASSWD_GROUP, writable by that
#     group (the ingest image's), so ingest can provision devices into it;
#   - certs/ (made by make-dev-certs.sh) is copied when it holds a server
#     certificate; otherwise the TLS listener (8883) is left out, with a warning;
#   - with MQTT_RELOAD_INTERVAL_S, Mosquitto runs as a child: every so many seconds
#     a changed MQTT_USERS_FILE is added and a changed password file makes the
#     broker re-read it (SIGHUP), since ingest in another container cannot signal it.
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

passwd=${MQTT_PASSWD_FILE:-$conf/passwd}
if [ "$passwd" != "$conf/passwd" ]; then
    sed -i "s|^password_file .*|password_file $passwd|" "$conf/mosquitto.conf"
fi
mkdir -p "$(dirname "$passwd")"
if [ ! -e "$passwd" ]; then
    touch "$passwd"
    echo "compose-entrypoint: created $passwd" >&2
fi
chmod 0600 "$passwd"
mosquitto_passwd -b "$passwd" svc.ingest "$MQTT_INGEST_PASSWORD"
mosquitto_passwd -b "$passwd" svc.healthcheck "$MQTT_HEALTHCHECK_PASSWORD"
for pair in ${MQTT_EXTRA_USERS:-}; do
    mosquitto_passwd -b "$passwd" "${pair%%:*}" "${pair#*:}"
done

add_users_file() {
    if [ -n "${MQTT_USERS_FILE:-}" ] && [ -f "$MQTT_USERS_FILE" ]; then
        count=0
        while IFS= read -r pair || [ -n "$pair" ]; do
            [ -n "$pair" ] || continue
            mosquitto_passwd -b "$passwd" "${pair%%:*}" "${pair#*:}"
            count=$((count + 1))
        done < "$MQTT_USERS_FILE"
        echo "compose-entrypoint: $count accounts from $MQTT_USERS_FILE" >&2
    fi
}
add_users_file

if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
    chown -R mosquitto:mosquitto "$conf" "$data"
    chown mosquitto "$passwd"
fi
if [ -n "${MQTT_PASSWD_GROUP:-}" ]; then
    # The broker's group-mates (ingest) may rewrite the file and lock it beside it.
    chgrp "$MQTT_PASSWD_GROUP" "$passwd" "$(dirname "$passwd")"
    chmod 0660 "$passwd"
    chmod 2770 "$(dirname "$passwd")"
fi

if [ -z "${MQTT_RELOAD_INTERVAL_S:-}" ]; then
    exec "${MOSQUITTO:-/usr/sbin/mosquitto}" -c "$conf/mosquitto.conf"
fi

fingerprint() { { cksum < "$1"; } 2>/dev/null || echo none; }
"${MOSQUITTO:-/usr/sbin/mosquitto}" -c "$conf/mosquitto.conf" &
broker=$!
trap 'kill -TERM "$broker" 2>/dev/null' TERM INT
users_seen=$(fingerprint "${MQTT_USERS_FILE:-/nonexistent}")
passwd_seen=$(fingerprint "$passwd")
while kill -0 "$broker" 2>/dev/null; do
    sleep "$MQTT_RELOAD_INTERVAL_S" &
    wait $! || true
    users_now=$(fingerprint "${MQTT_USERS_FILE:-/nonexistent}")
    if [ "$users_now" != "$users_seen" ]; then
        add_users_file
        users_seen=$users_now
    fi
    passwd_now=$(fingerprint "$passwd")
    if [ "$passwd_now" != "$passwd_seen" ]; then
        echo "compose-entrypoint: $passwd changed; the broker re-reads it" >&2
        kill -HUP "$broker" 2>/dev/null || true
        passwd_seen=$passwd_now
    fi
done
wait "$broker"
