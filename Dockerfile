# The farm-iot-collector image: the ingest service (default) and the simulators.
#   docker build -t farm-iot-collector .
#   docker run --rm farm-iot-collector python -m simulators --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user; /var/lib/farm is its home and holds the registry folder
# and the simulated devices' broker accounts (named volumes mounted there start
# out owned by it).
RUN groupadd --system --gid 10001 farm \
    && useradd --system --uid 10001 --gid farm --home-dir /var/lib/farm \
       --shell /usr/sbin/nologin farm \
    && install -d -o farm -g farm /var/lib/farm /var/lib/farm/registry \
       /var/lib/farm/broker-users /var/lib/farm/broker-passwd

# mosquitto_passwd (Debian's mosquitto package): ingest writes device passwords into the
# broker's password file (FARM_BROKER_PASSWD_FILE, a volume shared with the broker).
RUN apt-get update \
    && apt-get install -y --no-install-recommends mosquitto \
    && rm -rf /var/lib/apt/lists/*

# The project, installed from pyproject.toml; the source tree is not kept.
COPY . /tmp/src
RUN pip install /tmp/src && rm -rf /tmp/src

USER farm
WORKDIR /var/lib/farm
EXPOSE 8000
CMD ["python", "-m", "ingest_service"]
